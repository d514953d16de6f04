"""A private PgBouncer in front of the shared test server, for one test.

Debian's ``pgbouncer`` runs from a temporary directory (ini, userlist, log) on a free port of
127.0.0.1, with a default configuration apart from the pool mode: in particular no
``ignore_startup_parameters``, so a startup parameter PgBouncer does not know fails the
connection as it would for a user. ``auth_type = trust`` (the server trusts 127.0.0.1 too); the
userlist names the test users. PgBouncer refuses to run as root, so as root it drops to the
``postgres`` user (``-u``), which owns the directory.

Without the binary the tests skip locally and fail with ``CI=true`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from tests.conftest import IN_CI

BINARY = Path("/usr/sbin/pgbouncer")
#: The user PgBouncer runs as when the tests run as root.
RUN_AS = "postgres"
#: Users the test URLs connect as (the userlist must name them even with trust).
USERS = ("root", "postgres")
START_TIMEOUT = 10.0

PoolMode = Literal["session", "transaction", "statement"]


def require_pgbouncer() -> Path:
    """The binary; skip without it (fail in CI, where .ci/run installs it)."""
    found = BINARY if BINARY.exists() else shutil.which("pgbouncer")
    if found is None:
        message = (f"pgbouncer is not installed ({BINARY}); `apt-get install pgbouncer` "
                   "to run the PgBouncer tests")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return Path(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgBouncer:
    """One PgBouncer process; ``url(database)`` connects through it, as the server URL's user."""

    def __init__(self, server_url: str, databases: Sequence[str], *,
                 pool_mode: PoolMode = "transaction") -> None:
        server = urlsplit(server_url)
        self.user = server.username or "postgres"
        self.server_host = server.hostname or "127.0.0.1"
        self.server_port = server.port or 5432
        self.databases = list(databases)
        self.pool_mode = pool_mode
        self.dir = Path(tempfile.mkdtemp(prefix="soniq-pgbouncer-"))
        self.log = self.dir / "pgbouncer.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str | None = None) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database or self.databases[0]}"

    def output(self) -> str:
        """PgBouncer's log (and anything it printed before opening it)."""
        texts = [path.read_text(errors="replace")
                 for path in (self.dir / "stderr.txt", self.log) if path.exists()]
        return "\n".join(texts)

    def _write_config(self) -> Path:
        databases = "\n".join(
            f"{name} = host={self.server_host} port={self.server_port} dbname={name}"
            for name in self.databases)
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            f"[databases]\n{databases}\n\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"logfile = {self.log}\n"
        )
        (self.dir / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in USERS))
        if os.geteuid() == 0:
            owner = pwd.getpwnam(RUN_AS)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        return ini

    async def start(self) -> None:
        """Start on a free port and wait until a query gets through to the server."""
        binary = require_pgbouncer()
        for _ in range(3):  # the free port can be taken before PgBouncer binds it
            self._spawn(binary)
            if await self._wait_ready():
                return
        raise AssertionError(f"pgbouncer did not start:\n{self.output()[-3000:]}")

    def _spawn(self, binary: Path) -> None:
        self.port = free_port()
        ini = self._write_config()
        command = [str(binary), *(["-u", RUN_AS] if os.geteuid() == 0 else []), str(ini)]
        with (self.dir / "stderr.txt").open("wb") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)

    async def _wait_ready(self) -> bool:
        """True once a query through PgBouncer is answered; False if the process exited."""
        assert self.proc is not None
        last: Exception | None = None
        with anyio.move_on_after(START_TIMEOUT):
            while self.proc.poll() is None:
                try:
                    conn = await asyncpg.connect(self.url(), timeout=2, statement_cache_size=0)
                except (OSError, asyncpg.PostgresError) as exc:
                    last = exc
                else:
                    try:
                        await conn.fetchval("SELECT 1")
                    finally:
                        await conn.close()
                    return True
                await anyio.sleep(0.02)
            return False
        self.stop()
        raise AssertionError(f"pgbouncer accepted no query within {START_TIMEOUT}s ({last!r}):\n"
                             f"{self.output()[-3000:]}")

    def stop(self) -> None:
        """Immediate shutdown (SIGTERM closes every client and server connection)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_pgbouncer(server_url: str, databases: Sequence[str], *,
                            pool_mode: PoolMode = "transaction") -> AsyncIterator[PgBouncer]:
    """A started PgBouncer for ``databases`` on the server of ``server_url``; stopped and
    removed after the block."""
    bouncer = PgBouncer(server_url, databases, pool_mode=pool_mode)
    try:
        await bouncer.start()
        yield bouncer
    finally:
        bouncer.destroy()


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")
