"""``StatementPool``: an asyncpg pool whose single statements skip asyncpg's per-call checkout.

``asyncpg.Pool.fetchval(...)`` acquires a connection, runs the statement and releases it through
``asyncio.shield`` (a new task): two extra event-loop turns and a task per call, measured at ~40%
of a single enqueue's time here (PostgreSQL without fsync). Here a finished statement *parks* its
connection on a plain list, and the next statement or ``acquire()`` takes it from there without
an await; only an empty list goes to the asyncpg pool. Parked connections stay checked out of the
asyncpg pool, so ``pool_max_size`` still bounds them all -- and so a connection is parked only
while nobody is waiting for the asyncpg pool: otherwise it goes back there and wakes the waiter.

A statement that raises -- or is cancelled, which can leave the protocol mid-message -- returns its
connection through ``pool.release()``, which rolls back, waits out a cancellation, or closes a
broken connection, exactly as ``async with pool.acquire()`` would. Connections from ``acquire()``
(transactions, COPY, connections lent to user code) go back the same way. A parked connection
whose socket is lost is released by asyncpg itself (see :func:`_usable`); it is dropped when
next taken (``pool.release()`` of it is a no-op).

Like everything asyncpg-facing, its methods run on the driver's loop (inside ``_bridge.call``),
as do the pool's reset (:func:`keep_session`) and the backend's :func:`give_back` and
:func:`terminate`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Generator
    from types import TracebackType

__all__ = ["StatementPool", "give_back", "keep_session", "terminate"]


class StatementPool:
    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._parked: list[Any] = []
        self._waiting = 0  # callers inside the asyncpg pool's acquire()

    def acquire(self) -> _Checkout:
        """``async with pool.acquire() as conn`` or ``conn = await pool.acquire()`` (then
        :meth:`release`), as on an asyncpg pool."""
        return _Checkout(self)

    async def release(self, connection: Any) -> None:
        await self._pool.release(connection)

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return await self._run("fetch", query, args)  # type: ignore[no-any-return]

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._run("fetchrow", query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run("fetchval", query, args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self._run("execute", query, args)  # type: ignore[no-any-return]

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        conn = self._parked.pop() if self._parked else None  # the common case: no await
        if conn is None or not _usable(conn):
            if conn is not None:
                await self._pool.release(conn)  # the server went away: the pool replaces it
            conn = await self._take()
        try:
            result = await getattr(conn, method)(query, *args)
        except BaseException:
            await self._pool.release(conn)
            raise
        if self._waiting:
            await self._pool.release(conn)
        else:
            self._parked.append(conn)
        return result

    async def _take(self) -> Any:
        while self._parked:
            conn = self._parked.pop()
            if _usable(conn):
                return conn
            await self._pool.release(conn)  # the server went away meanwhile: the pool replaces it
        self._waiting += 1
        try:
            return await self._pool.acquire()
        finally:
            self._waiting -= 1

    async def close(self) -> None:
        """Return the parked connections, then close the pool (waiting for borrowed ones)."""
        parked, self._parked = self._parked, []
        for conn in parked:
            await self._pool.release(conn)
        await self._pool.close()

    def terminate(self) -> None:
        self._parked.clear()
        self._pool.terminate()


def _usable(conn: Any) -> bool:
    """Whether a parked connection can run a statement. Not once it is closed -- nor once its
    socket was lost while it sat parked (a server restart or crash, a cut link): asyncpg's
    connection-lost callback then releases it to the asyncpg pool by itself and detaches the
    proxy we hold, whose every method (``is_closed()`` included) raises ``InterfaceError:
    connection has been released back to the pool``. A detached proxy has ``_con = None``, the
    test asyncpg's own ``Pool.release()`` makes ("already released, do nothing")."""
    con = conn._con
    return con is not None and not con.is_closed()


class _Checkout:
    def __init__(self, owner: StatementPool) -> None:
        self._owner = owner
        self._conn: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._owner._take().__await__()

    async def __aenter__(self) -> Any:
        self._conn = await self._owner._take()
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._owner.release(self._conn)


async def keep_session(conn: Any) -> None:
    """The pool's reset for Soniq's own calls: nothing. They leave no session state behind (asyncpg
    still rolls back an open transaction), and asyncpg's default reset query (``RESET ALL``,
    ``UNLISTEN *``, ...) would cost a round trip per call. Connections lent to user code are reset
    in full by :func:`give_back`."""


async def give_back(pool: Any, conn: Any) -> None:
    """Release a connection lent out by ``acquire()``, with its session reset first (user code may
    have SET, LISTENed or taken advisory locks); one that cannot be reset is closed instead."""
    try:
        await conn.reset()
    except Exception:
        conn.terminate()
    await pool.release(conn)


async def terminate(pool: Any) -> None:
    """Close ``pool`` at once (a close that waited too long for borrowed connections)."""
    pool.terminate()
