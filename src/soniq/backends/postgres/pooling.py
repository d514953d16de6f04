"""Telling whether PostgreSQL is reached through a pooler that shares server sessions between
client connections -- PgBouncer with ``pool_mode = transaction`` (or ``statement``), or similar.

There a session lasts one transaction: a prepared statement, a ``LISTEN``, a ``SET`` or a session
advisory lock stays behind on whichever server connection ran it, and the client's next
statement may run on another. Soniq supports that setup with ``statement_cache_size=0`` (no
prepared statements; workers poll instead of LISTEN, or LISTEN on a direct ``listen_url``, which
is refused when it is itself pooled that way). With the cache on, the pool refuses to open
there (:func:`refuse_transaction_pooling`), and ``soniq doctor`` reports the mode.

PgBouncer answers no question about itself on a client connection (``SHOW pool_mode`` reaches the
server, which does not know it), so the signals are what any client can observe:

- The cancel key. PostgreSQL's startup reply carries its backend pid; a pooler that multiplexes
  server connections has to make up its own key, so ``pg_backend_pid()`` differing from it means
  a pooler sits in between (in any mode). Equal on every direct connection: a cheap first test.
- Shared sessions. Two client connections that are both open never share a server session on a
  direct connection or in session pooling. Behind transaction pooling each statement runs on a
  free server connection: PgBouncer hands out the most recently used one first, so the second
  client's statement lands on the first client's backend (and with ``server_round_robin`` one
  client's two statements land on different backends). Either is proof, never a guess; a busy
  pooler can hide it (another client took that server in between), so this can miss, not err.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from soniq.backends.postgres.errors import redact_url
from soniq.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["BACKEND_PID", "log_listen_off", "refuse_transaction_pooling", "shares_sessions",
           "transaction_pooled"]

logger = logging.getLogger("soniq.postgres")

BACKEND_PID = "SELECT pg_backend_pid()"

#: What a cached prepared statement meets behind transaction pooling: another client's statement
#: of the same name on the server it landed on, or none of its own on a different one.
_STATEMENT_LOST = (asyncpg.DuplicatePreparedStatementError, asyncpg.InvalidSQLStatementNameError)


def shares_sessions(first: int, again: int, other: int) -> bool:
    """From ``pg_backend_pid()`` asked twice on one client connection (``first``, ``again``),
    then once on a second client connection open at the same time (``other``): whether server
    sessions are shared between clients (transaction pooling)."""
    return first != again or other in (first, again)


async def refuse_transaction_pooling(pool: Any, url: str) -> None:
    """Raise :class:`ConfigurationError` when ``pool`` (asyncpg's, with the statement cache on)
    reaches PostgreSQL through transaction pooling. Runs on the driver's loop when the pool opens;
    on a direct connection it costs one statement."""

    async def other_pid() -> int:
        async with pool.acquire() as second:
            return int(await second.fetchval(BACKEND_PID))

    try:
        async with pool.acquire() as first:
            pooled = await transaction_pooled(first, other_pid if pool.get_max_size() >= 2 else None)
    except _STATEMENT_LOST:
        pooled = True
    if pooled:
        raise ConfigurationError(
            f"{redact_url(url)} is reached through transaction pooling (PgBouncer pool_mode = "
            "transaction, or similar), where prepared statements and LISTEN do not work: set "
            "SONIQ_STATEMENT_CACHE_SIZE=0 (statement_cache_size=0), and workers poll every "
            "poll_interval instead of LISTEN; or connect directly or through session pooling"
        )


async def transaction_pooled(first: Any, other_pid: Callable[[], Awaitable[int]] | None) -> bool:
    """Whether the client connection ``first`` reaches PostgreSQL through transaction pooling;
    ``other_pid`` asks ``pg_backend_pid()`` on a second client connection while ``first`` stays
    open (None: there is none to ask). On a direct connection it costs one statement."""
    pid = await first.fetchval(BACKEND_PID)
    if first.get_server_pid() == pid:
        return False  # PostgreSQL itself answered the startup: no pooler in between
    again = await first.fetchval(BACKEND_PID)
    if other_pid is None:
        return bool(again != pid)
    return shares_sessions(pid, again, await other_pid())


def log_listen_off(poll_interval: float) -> None:
    """Say why a worker on ``statement_cache_size=0`` holds no LISTEN connection."""
    logger.info("LISTEN is off: statement_cache_size=0 is the mode for transaction pooling "
                "(PgBouncer), where no LISTEN session can be held; polling every %gs "
                "(poll_interval) instead", poll_interval)
