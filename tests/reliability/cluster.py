"""A private PostgreSQL cluster for tests that stop, restart or crash the server.

``initdb`` runs as the ``postgres`` user into a temporary directory, from the installed binaries
(``pg_config --bindir``); the server listens on a free port of 127.0.0.1 and on a socket in that
directory, so it never meets the machine's shared server that the other tests use. fsync is off
(a killed server keeps what it wrote in the page cache, so crash recovery is still exercised) and
synchronous_commit stays on: a commit the client was told about must survive ``restart
("immediate")``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

OWNER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bindir() -> Path:
    found = shutil.which("pg_config")
    if found is None:
        raise RuntimeError("pg_config is not installed: no PostgreSQL binaries for a private cluster")
    return Path(subprocess.run([found, "--bindir"], capture_output=True, text=True,
                               check=True).stdout.strip())


class PrivateCluster:
    """``start()``, ``stop(mode)``, ``restart(mode)``, ``url(database)``; ``destroy()`` at the end."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix="soniq-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        owner = pwd.getpwnam(OWNER)
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")

    def _run(self, tool: str, *args: str) -> None:
        command = ["runuser", "-u", OWNER, "--", str(self.bin / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}"
                               f"\n{self.log.read_text() if self.log.exists() else ''}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)
