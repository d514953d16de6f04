"""One SQLite file as the adapter sees it: its connections, its embedded schema, transactions,
the loop everything runs on, and the translation of driver errors.

Connections: a *writer*, used for every write, and a *reader* for single-statement reads (WAL lets
it read while the writer writes). The writer runs explicit transactions (``BEGIN IMMEDIATE`` ...
``COMMIT``) as several driver calls, so a lock keeps another task's statements out of them; the
write lock on the file itself (``BEGIN IMMEDIATE`` + ``busy_timeout``) is what keeps writers in
other processes out. An in-memory database (``:memory:``) has no second connection: reads share
the writer and its lock.

Loops: aiosqlite is asyncio-only. Every driver call happens inside a coroutine handed to
:func:`soniq.backends._bridge.call` by :meth:`SqliteDatabase.run`, connections included, so under
trio they live on the bridge's asyncio loop; the lock and events are created there too.

Schema: created or upgraded on first use from ``migrations/sqlite`` (an embedded database has a
single owner, DESIGN.md §3), each migration in one transaction with its ``soniq_migrations`` row,
with foreign keys off (so a migration may rebuild a table others reference: SQLite's "12-step"
ALTER) and checked before the commit.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import aiosqlite
import anyio

from soniq.backends._bridge import call
from soniq.backends.sqlite import sql
from soniq.errors import DatabaseError, DataRejectedError, MigrationError
from soniq.migrations import MIGRATIONS_TABLE, Migration, load_migrations
from soniq.serialization import utc_now

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

__all__ = ["PRUNE_BATCH", "SqliteDatabase"]

logger = logging.getLogger("soniq.sqlite")
# aiosqlite logs every statement with its bind parameters at DEBUG: job arguments and webhook
# secrets would reach the logs of anyone who turns DEBUG on globally (DESIGN.md §8).
logging.getLogger("aiosqlite").setLevel(logging.INFO)

P = ParamSpec("P")
T = TypeVar("T")
#: Rows deleted per prune statement: short write locks, so claims slip in between batches.
PRUNE_BATCH = 1000


class SqliteDatabase:
    """The connections to one SQLite file. Construction does no I/O."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self._in_memory = self.path in ("", ":memory:")
        self._busy_timeout_ms = max(0, int(busy_timeout * 1000))
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock: anyio.Lock | None = None
        self._opening: anyio.Event | None = None
        self._schema_ready = False

    # -- the one door to the driver ----------------------------------------------------------
    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the loop that owns the connections, once they are open and the schema
        is up to date; driver errors come out as :class:`~soniq.errors.DatabaseError`."""

        async def ready_then_fn() -> T:
            await self._ready()
            return await fn(*args, **kwargs)

        return await call(self._on_owner_loop, ready_then_fn)

    async def _on_owner_loop(self, thunk: Callable[[], Awaitable[T]]) -> T:
        try:
            return await thunk()
        except (sqlite3.DataError, sqlite3.IntegrityError) as exc:
            # A string or blob too big, a constraint: the same statement fails the same way again.
            raise DataRejectedError(f"SQLite refused a value in {self.path!r}: {exc}") from exc
        except aiosqlite.Error as exc:
            raise DatabaseError(f"SQLite error on {self.path!r}: {exc}") from exc

    # -- lifecycle ----------------------------------------------------------------------------
    async def migrate(self) -> list[str]:
        """Open if needed and apply pending migrations; the labels applied."""

        async def connect_and_migrate() -> list[str]:
            await self._connect()
            return await self._migrate()

        return await call(self._on_owner_loop, connect_and_migrate)

    async def close(self) -> None:
        if self._writer is None and self._opening is None:
            return  # never opened: no need to start the bridge just to do nothing
        await call(self._on_owner_loop, self._close)

    async def _ready(self) -> None:
        await self._connect()
        if not self._schema_ready:
            await self._migrate()

    async def _connect(self) -> None:
        # Concurrent first calls share one opening instead of each opening connections.
        while self._writer is None:
            if self._opening is not None:
                await self._opening.wait()
                continue
            opening = self._opening = anyio.Event()
            try:
                await self._open()
            finally:
                self._opening = None
                opening.set()

    async def _open(self) -> None:
        writer = await self._open_connection(reader=False)
        try:
            reader = None if self._in_memory else await self._open_connection(reader=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await writer.close()
            raise
        self._write_lock = anyio.Lock()
        self._writer, self._reader = writer, reader

    async def _open_connection(self, *, reader: bool) -> aiosqlite.Connection:
        # isolation_level=None: no implicit BEGIN; transactions are explicit below.
        conn = aiosqlite.connect(self.path, isolation_level=None)
        thread = _thread_of(conn)
        if thread is not None:
            thread.daemon = True  # see _thread_of
        try:
            await conn
        except BaseException as exc:
            # aiosqlite stops the thread of a connection that failed to open without waiting for
            # it, and the thread then calls back into this loop: wait, so the loop (under trio,
            # the bridge's) is still there when it does.
            if thread is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(thread.join)
            if isinstance(exc, aiosqlite.OperationalError):
                raise DatabaseError(_cannot_open(self.path, exc)) from exc
            raise
        try:
            # busy_timeout first: switching to WAL waits for other connections too.
            await conn.execute_fetchall(f"PRAGMA busy_timeout = {self._busy_timeout_ms:d}")
            if not reader:
                [(mode,)] = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
                if mode != "wal" and not self._in_memory:
                    logger.warning("SQLite database %r runs in journal mode %r, not WAL; "
                                   "readers will wait for writers", self.path, mode)
            await conn.execute_fetchall("PRAGMA synchronous = NORMAL")
            await conn.execute_fetchall("PRAGMA foreign_keys = ON")
            if reader:
                await conn.execute_fetchall("PRAGMA query_only = ON")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn

    async def _close(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._opening is not None:
                await self._opening.wait()
            writer, reader, lock = self._writer, self._reader, self._write_lock
            self._writer = self._reader = None
            self._write_lock = None
            self._schema_ready = False
            if reader is not None:
                await reader.close()
            if writer is not None and lock is not None:
                async with lock:  # let a transaction in flight finish first
                    await writer.close()

    # -- schema -------------------------------------------------------------------------------
    async def _migrate(self) -> list[str]:
        migrations = load_migrations("sqlite")
        done = await self._applied_versions()
        latest = max((m.version for m in migrations), default=0)
        if max(done, default=0) > latest:
            raise DatabaseError(
                f"the SQLite database {self.path!r} has schema version {max(done)}, newer than "
                f"this Soniq release knows ({latest}); upgrade soniq to use it"
            )
        applied = [m.label for m in migrations if m.version not in done and await self._apply(m)]
        self._schema_ready = True
        return applied

    async def _applied_versions(self) -> set[int]:
        try:
            rows = await self.read("SELECT version FROM soniq_migrations", ())
        except aiosqlite.OperationalError:  # no such table yet: a new database
            return set()
        return {int(version) for (version,) in rows}

    async def _apply(self, migration: Migration) -> bool:
        """Apply one migration and record it, in one transaction; False when another connection
        applied it first."""
        async with self.transaction(foreign_keys=False) as conn:
            await conn.execute_fetchall(MIGRATIONS_TABLE["sqlite"])
            found = await conn.execute_fetchall(
                "SELECT 1 FROM soniq_migrations WHERE version = ?", (migration.version,))
            if list(found):
                return False
            try:
                for statement in sql.split_statements(migration.sql):
                    await conn.execute_fetchall(statement)
                broken = list(await conn.execute_fetchall("PRAGMA foreign_key_check"))
                if broken:
                    raise MigrationError(
                        f"SQLite migration {migration.label} would leave rows whose foreign keys "
                        f"point nowhere on {self.path!r} (first: {tuple(broken[0])}); nothing of "
                        "it was committed")
                await conn.execute_fetchall(
                    "INSERT INTO soniq_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, sql.to_db(utc_now())),
                )
            except aiosqlite.Error as exc:
                raise MigrationError(
                    f"SQLite migration {migration.label} failed on {self.path!r}: {exc}; "
                    "nothing of it was committed"
                ) from exc
        logger.info("applied SQLite migration %s to %r", migration.label, self.path)
        return True

    # -- statements (call these only inside run()) ------------------------------------------
    def _writer_and_lock(self) -> tuple[aiosqlite.Connection, anyio.Lock]:
        if self._writer is None or self._write_lock is None:
            raise DatabaseError(f"the SQLite database {self.path!r} was closed during the call")
        return self._writer, self._write_lock

    @asynccontextmanager
    async def transaction(self, *, foreign_keys: bool = True
                          ) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the writer, holding the lock throughout.

        IMMEDIATE takes the file's write lock up front (waiting up to ``busy_timeout``), so a
        transaction never fails half-way because another process wrote first.
        ``foreign_keys=False`` (migrations): no foreign key is enforced or acted on until it
        ends (SQLite changes that setting only outside a transaction).
        """
        conn, lock = self._writer_and_lock()
        async with lock:
            if not foreign_keys:
                await conn.execute_fetchall("PRAGMA foreign_keys = OFF")
            try:
                await conn.execute_fetchall("BEGIN IMMEDIATE")
                yield conn
                await conn.execute_fetchall("COMMIT")
            except BaseException:
                # Also on cancellation: a transaction left open would swallow the next task's
                # statements. The driver runs calls in order, so this waits for any statement
                # still in flight; rollback() does nothing when no transaction is open.
                with anyio.CancelScope(shield=True):
                    await conn.rollback()
                raise
            finally:
                if not foreign_keys:
                    with anyio.CancelScope(shield=True):
                        await conn.execute_fetchall("PRAGMA foreign_keys = ON")

    async def write(self, statement: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        """One statement on the writer, in its own implicit transaction; its rows."""
        conn, lock = self._writer_and_lock()
        async with lock:
            return list(await conn.execute_fetchall(statement, params))

    async def prune(self, statement: str, *params: str, batch: int = PRUNE_BATCH) -> int:
        """Run ``statement`` (a ``DELETE ... RETURNING`` taking ``params``, then the batch size)
        until a batch comes back short; each batch is its own short write."""
        total = 0
        while True:
            deleted = len(await self.write(statement, (*params, batch)))
            total += deleted
            if deleted < batch:
                return total

    async def read(self, statement: str, params: Sequence[Any]) -> list[Any]:
        """One read-only statement; its rows."""
        if self._reader is not None:
            return list(await self._reader.execute_fetchall(statement, params))
        return await self.write(statement, params)


def _thread_of(conn: aiosqlite.Connection) -> threading.Thread | None:
    """The connection's driver thread, not started yet.

    aiosqlite (>= 0.22) runs each connection on a non-daemon thread that only ``close()`` stops,
    so one connection left open (a script that never closes its app, a worker that crashed)
    keeps the interpreter from exiting, forever: the caller makes it a daemon. Dying with the
    process is safe for SQLite: an interrupted transaction is rolled back on the next open, as
    after a crash.
    """
    thread = conn if isinstance(conn, threading.Thread) else getattr(conn, "_thread", None)
    if isinstance(thread, threading.Thread) and not thread.is_alive():
        return thread
    return None


def _cannot_open(path: str, exc: Exception) -> str:
    """Why a database file could not be opened, in words that say what to do."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return (f"cannot open the SQLite database {path!r}: its directory {directory!r} does not "
                "exist; create the directory first or choose another path")
    return f"cannot open the SQLite database {path!r}: {exc}"
