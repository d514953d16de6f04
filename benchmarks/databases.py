"""Fresh databases for each measurement, and a probe that watches them.

Every measurement gets its own PostgreSQL database, ``soniq_bench_<random hex>``, created on the
server of ``SONIQ_BENCH_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432``) and dropped
afterwards (the soak run's is ``soniq_soak_<random hex>``); only names this module generated are
ever dropped. SQLite measurements get a file in a fresh temporary directory, removed afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread
import asyncpg

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

__all__ = ["PG_SERVER_URL", "Probe", "Target", "fresh_postgres", "fresh_sqlite", "server_info"]

PG_SERVER_URL = os.environ.get("SONIQ_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
_PREFIX = "soniq_bench_"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _check_local(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"benchmarks only run against a server on this machine, not {host!r}")


@dataclass(frozen=True)
class Target:
    """Where one measurement's jobs live."""

    kind: str  # "postgres" or "sqlite"
    url: str  # what the system under test is given (a PostgreSQL URL or a SQLite file path)


@asynccontextmanager
async def fresh_postgres(prefix: str = _PREFIX) -> AsyncIterator[Target]:
    """A new empty database for one measurement, ``<prefix><random hex>``; dropped (with any
    leftover sessions) after."""
    _check_local(PG_SERVER_URL)
    name = f"{prefix}{secrets.token_hex(6)}"
    admin = await asyncpg.connect(_with_database(PG_SERVER_URL, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield Target("postgres", _with_database(PG_SERVER_URL, name))
        finally:
            with anyio.CancelScope(shield=True):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        with anyio.CancelScope(shield=True):
            await admin.close()


@asynccontextmanager
async def fresh_sqlite() -> AsyncIterator[Target]:
    """A path in a new temporary directory (the system under test creates the file)."""
    directory = Path(tempfile.mkdtemp(prefix=_PREFIX))
    try:
        yield Target("sqlite", str(directory / "bench.db"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def server_info() -> dict[str, str]:
    """PostgreSQL's version and the settings that shape these numbers."""
    _check_local(PG_SERVER_URL)
    conn = await asyncpg.connect(_with_database(PG_SERVER_URL, "postgres"))
    try:
        info = {"version": await conn.fetchval("SELECT version()")}
        for setting in ("shared_buffers", "synchronous_commit", "fsync", "max_connections"):
            info[setting] = await conn.fetchval(f"SHOW {setting}")
        return info
    finally:
        await conn.close()


@dataclass(frozen=True)
class ProbeSql:
    """How a system's tables answer the probe's questions (PostgreSQL or SQLite dialect).

    ``remaining``: any job not finished yet (a truthy first column). ``last_done``: when the last
    job finished, as epoch seconds (PostgreSQL) or ISO text (SQLite). ``done``: how many jobs
    finished. ``queued``: how many wait. ``done_before``: jobs finished at or before $1 (epoch).
    """

    remaining: str
    last_done: str
    done: str
    queued: str
    done_before: str | None = None
    #: (name, query): counts read once after a burn-down and reported with its metrics
    #: (what a ``features`` variant left behind: log records, webhook deliveries...).
    counts: tuple[tuple[str, str], ...] = ()


class Probe:
    """Reads a system's tables from outside it (one connection), to time burn-downs exactly."""

    def __init__(self, target: Target, sql: ProbeSql) -> None:
        self._target = target
        self._sql = sql
        self._pg: asyncpg.Connection | None = None

    async def __aenter__(self) -> Probe:
        if self._target.kind == "postgres":
            self._pg = await asyncpg.connect(self._target.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pg is not None:
            with anyio.CancelScope(shield=True):
                await self._pg.close()

    async def _value(self, query: str, *args: object) -> Any:
        if self._pg is not None:
            return await self._pg.fetchval(query, *args)
        return await anyio.to_thread.run_sync(_sqlite_value, self._target.url, query, args)

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        """All rows of a query (PostgreSQL only; empty elsewhere)."""
        if self._pg is None:
            return []
        return [tuple(row) for row in await self._pg.fetch(query)]

    async def execute(self, query: str) -> None:
        """Run a maintenance statement (PostgreSQL only, e.g. CHECKPOINT)."""
        if self._pg is not None:
            await self._pg.execute(query)

    async def remaining(self) -> bool:
        return bool(await self._value(self._sql.remaining))

    async def done(self) -> int:
        return int(await self._value(self._sql.done) or 0)

    async def queued(self) -> int:
        return int(await self._value(self._sql.queued) or 0)

    async def done_before(self, epoch: float) -> int:
        if self._sql.done_before is None:
            raise NotImplementedError("this system cannot count jobs finished before a time")
        return int(await self._value(self._sql.done_before, epoch) or 0)

    async def counts(self) -> dict[str, int]:
        """The system's extra counts (:attr:`ProbeSql.counts`), by name."""
        return {name: int(await self._value(query) or 0) for name, query in self._sql.counts}

    async def last_done(self) -> float | None:
        """Epoch seconds at which the last job was written as finished, if known."""
        value = await self._value(self._sql.last_done)
        if value is None:
            return None
        if isinstance(value, str):  # SQLite keeps fixed-width ISO text in UTC
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        return float(value)

    async def wait_until_drained(self, *, within: float, interval: float = 0.1,
                                 on_poll: Callable[[], None] | None = None) -> float:
        """Poll until nothing remains; returns the epoch time of the poll that saw it drained.
        Raises TimeoutError after ``within`` seconds (a bounded loop)."""
        with anyio.fail_after(within):
            while await self.remaining():
                if on_poll is not None:
                    on_poll()
                await anyio.sleep(interval)
        return time.time()


def _sqlite_value(path: str, query: str, args: tuple[object, ...]) -> Any:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        row = conn.execute(query, args).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()
