"""Housekeeping on PostgreSQL: ``ANALYZE soniq_jobs`` when a worker starts, the rescue of silent
workers' jobs, pruning expired jobs, and the other stores' pruning and rollups.

A role or database may carry a ``statement_timeout`` sized for the application's own queries
(``ALTER ROLE app SET statement_timeout = '200ms'``). Housekeeping over a large table can need
longer, so every maintenance statement runs in a transaction that sets its own
``statement_timeout`` (the ``maintenance_statement_timeout`` setting) with
``set_config(..., is_local => true)``: transaction-local, so nothing stays behind on the session
and PgBouncer's transaction pooling is safe. ``ANALYZE`` is an optimisation: when it fails anyway
(a lock it waited on past that timeout, say) the worker logs why and starts regardless.

The functions run on the driver's loop (through :func:`soniq.backends._bridge.call`).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from soniq.backends.base import worker_lost_error
from soniq.backends.postgres import sql
from soniq.serialization import dumps

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from soniq.backends.postgres.sql import Sql

__all__ = ["PRUNE_BATCH_SIZE", "analyze", "maintenance", "prune", "prune_in_batches", "rescue",
           "timeout_setting"]

#: Rows deleted per prune statement: short transactions, few row locks held at once.
PRUNE_BATCH_SIZE = 5_000

#: $1 the timeout as PostgreSQL reads it (milliseconds; '0' for none), for this transaction only.
SET_LOCAL_TIMEOUT = "SELECT set_config('statement_timeout', $1::text, true)"


def timeout_setting(seconds: float) -> str:
    """``maintenance_statement_timeout`` as the value of ``statement_timeout`` (milliseconds)."""
    return str(round(seconds * 1000))


@asynccontextmanager
async def maintenance(pool: Any, statement_timeout: str) -> AsyncIterator[Any]:
    """A connection of ``pool`` in a transaction whose statements run under ``statement_timeout``
    (see :func:`timeout_setting`), whatever the role's or database's ``statement_timeout``."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(SET_LOCAL_TIMEOUT, statement_timeout)
        yield conn


async def analyze(pool: Any, q: Sql, statement_timeout: str) -> str | None:
    """``ANALYZE soniq_jobs`` under the maintenance timeout: None when it ran, else why not (it is
    best-effort: without it claims are slower until autovacuum analyzes the table)."""
    try:
        async with maintenance(pool, statement_timeout) as conn:
            await conn.execute(q.analyze_jobs)
    except asyncpg.PostgresError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def rescue(pool: Any, q: Sql, statement: str, stale_after: float, now: datetime | None,
                 statement_timeout: str) -> list[str]:
    """Give back the jobs of silent or vanished workers, in one transaction, with ``statement``
    (a variant of ``Statements.rescue_jobs``). The ``WorkerLost``
    entries are built by :func:`~soniq.backends.base.worker_lost_error`, the one place their
    shape is decided; the write is still fenced by lease."""
    async with maintenance(pool, statement_timeout) as conn:
        clock: datetime = await conn.fetchval(sql.CLOCK, now)
        cutoff = clock - timedelta(seconds=stale_after)
        lost = await conn.fetch(q.lost_jobs, cutoff)
        rescued: list[str] = []
        if lost:
            errors = [dumps(worker_lost_error(row["worker_id"], row["attempts"], clock))
                      for row in lost]
            rows = await conn.fetch(statement, [row["id"] for row in lost],
                                    [row["lease_id"] for row in lost], errors, clock)
            rescued = sorted(str(row["id"]) for row in rows)
        await conn.execute(q.remove_silent_workers, cutoff)
        return rescued


async def prune(pool: Any, q: Sql, now: datetime | None, statement_timeout: str) -> int:
    """Delete expired finished jobs in batches, each its own short transaction."""
    return await prune_in_batches(pool, statement_timeout, q.prune_jobs, now, PRUNE_BATCH_SIZE)


async def prune_in_batches(pool: Any, statement_timeout: str, statement: str, before: datetime | None,
                           batch: int) -> int:
    """Run ``statement`` (a ``DELETE`` taking ``$1`` ``before`` and ``$2`` ``batch``) once per
    transaction until a batch comes back short; how many rows it deleted."""
    total = 0
    while True:
        async with maintenance(pool, statement_timeout) as conn:
            status = await conn.execute(statement, before, batch)
        deleted = int(status.rpartition(" ")[2])
        total += deleted
        if deleted < batch:
            return total
