"""Housekeeping on PostgreSQL: ``ANALYZE soniq_jobs`` when a worker starts, the rescue of silent
workers' jobs, the dead letters of jobs no live worker knows (``unknown_job_grace``), pruning
expired jobs and the flow-control tables (:class:`ControlSql`), and the
other stores' pruning and rollups.

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

import functools
import logging
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from soniq.backends.base import unknown_job_error, worker_lost_error
from soniq.backends.postgres import slots, sql
from soniq.limits import LONGEST_PERIOD
from soniq.serialization import dumps, utc_now

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from soniq.backends.postgres.names import Names
    from soniq.backends.postgres.sql import Sql
    from soniq.types import WorkerInfo

__all__ = ["PRUNE_BATCH_SIZE", "ControlSql", "analyze", "control_sql", "dead_letter_unknown",
           "maintenance", "prune", "prune_control", "prune_in_batches", "register_worker",
           "rescue", "timeout_setting"]

logger = logging.getLogger("soniq.postgres")

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


async def register_worker(pool: Any, q: Sql, worker: WorkerInfo, now: datetime | None,
                          statement_timeout: str) -> None:
    """Register ``worker``, then -- before its first claim -- analyze ``soniq_jobs`` if its
    statistics are stale: a backlog loaded since the last statistics (autovacuum off, or not
    round yet) would make every claim sort the whole backlog (sql.py)."""
    queues = None if worker.queues is None else list(worker.queues)
    await pool.execute(q.register_worker, worker.id, worker.hostname, worker.pid, queues,
                       worker.concurrency, now, list(worker.job_names))
    if await pool.fetchval(q.statistics_stale):
        failed = await analyze(pool, q, statement_timeout)
        if failed is None:
            logger.info("analyzed soniq_jobs: its statistics were missing or stale")
        else:
            logger.warning("could not analyze soniq_jobs (%s); starting anyway: claims may be "
                           "slow until autovacuum analyzes it", failed)


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
            freed = slots.freed(rows)
            if freed:  # dead-lettered or cancelled slot holders: their slots go on
                await slots.hand_over(conn, q.slots, freed)
        await conn.execute(q.remove_silent_workers, cutoff)
        return rescued


@functools.cache
def _unknown_sql(n: Names) -> tuple[str, str]:
    """$1 cutoff, $2 known job names, $3 batch size: queued jobs due since the cutoff whose
    name is not known, locked; then $1 ids, $2 error entries (JSON text), $3 now: those
    dead-lettered."""
    found = f"""
SELECT id, job_name, attempts FROM {n.jobs}
WHERE status = 'queued' AND scheduled_at <= $1::timestamptz AND job_name <> ALL ($2::text[])
ORDER BY id
LIMIT $3
FOR UPDATE SKIP LOCKED
"""
    ended = f"""
UPDATE {n.jobs} AS j
SET status = 'dead_letter', errors = j.errors || jsonb_build_array(o.error::jsonb),
    finished_at = $3::timestamptz, updated_at = $3::timestamptz
FROM unnest($1::uuid[], $2::text[]) AS o (id, error)
WHERE j.id = o.id AND j.status = 'queued'
RETURNING j.id, {slots.FREED}
"""
    return found, ended


async def dead_letter_unknown(pool: Any, q: Sql, known: list[str], grace: float,
                              now: datetime | None, statement_timeout: str) -> list[str]:
    """Dead-letter the queued jobs due for ``grace`` seconds whose name is not in ``known``, in
    one transaction, with an ``UnknownJob`` entry (:func:`~soniq.backends.base.unknown_job_error`);
    the slots they held go on. At most :data:`PRUNE_BATCH_SIZE` per call (one cleanup round):
    the next round takes the rest."""
    found, ended = _unknown_sql(q.names)
    async with maintenance(pool, statement_timeout) as conn:
        clock: datetime = await conn.fetchval(sql.CLOCK, now)
        rows = await conn.fetch(found, clock - timedelta(seconds=grace), known, PRUNE_BATCH_SIZE)
        if not rows:
            return []
        errors = [dumps(unknown_job_error(row["job_name"], row["attempts"], grace, clock))
                  for row in rows]
        rows = await conn.fetch(ended, [row["id"] for row in rows], errors, clock)
        freed = slots.freed(rows)
        if freed:
            await slots.hand_over(conn, q.slots, freed)
        return sorted(str(row["id"]) for row in rows)


async def prune(pool: Any, q: Sql, now: datetime | None, statement_timeout: str,
                result_ttl: float | None) -> int:
    """Delete expired finished jobs in batches, each its own short transaction; with
    ``result_ttl``, also jobs cancelled before they started that finished that long ago."""
    pruned = await prune_in_batches(pool, statement_timeout, q.prune_jobs, now,
                                    batch=PRUNE_BATCH_SIZE)
    if result_ttl is not None:
        cutoff = (now or utc_now()) - timedelta(seconds=result_ttl)
        pruned += await prune_in_batches(pool, statement_timeout, q.prune_cancelled, cutoff,
                                         batch=PRUNE_BATCH_SIZE)
    return pruned


def _prune_keyed(table: str, n: Names, idle: str, *, key: str, hold: str, limit: str) -> str:
    """One batch (``limit``) of ``table``'s (job_name, key) rows that are ``idle`` and whose key
    has no queued job held for it (``hold``), locked ``SKIP LOCKED`` (a row a claim or an
    insert holds is left for the next round)."""
    return f"""
DELETE FROM {table} AS s
USING (
    SELECT i.job_name, i.key FROM {table} AS i
    WHERE {idle}
      AND NOT EXISTS (SELECT 1 FROM {n.jobs} AS j
                      WHERE j.job_name = i.job_name AND j.{key} = i.key
                        AND j.status = 'queued' AND j.hold = '{hold}')
    LIMIT {limit}::integer
    FOR UPDATE OF i SKIP LOCKED
) AS idle
WHERE s.job_name = idle.job_name AND s.key = idle.key
"""


class ControlSql:
    """The statements that prune the flow-control tables, for one schema (:func:`control_sql`).
    Each deletes one batch (its last parameter) of rows that carry no information.

    Inserts never wait for these deletes to decide, nor are they undone by them. An insert takes
    a slot with ``INSERT ... ON CONFLICT DO UPDATE`` (a bulk insert locks with the same upsert,
    a release with ``FOR UPDATE``), which locks the slot row; the batch locks the rows it
    deletes ``FOR UPDATE SKIP LOCKED``, so a row an insert holds is skipped, and a row it took
    since the batch's snapshot is followed to its newest version and re-checked (READ
    COMMITTED): ``active = 0`` no longer holds, so it is not deleted. An insert that meets a row
    this batch locked waits for the delete's commit, then inserts the row afresh (``active =
    1``): the slot is still taken. (Checked with two connections in
    ``tests/backends/test_limits_postgres.py``; a plain ``DELETE ... WHERE active = 0`` that
    waits for the insert's lock re-checks the same way and deletes nothing, checked by hand.) Rate buckets are locked the same way: a claim
    that holds one is skipped, one it refilled since is re-checked. A bucket deleted while a
    rate-limited job of its key is being inserted -- the key's existence check ran on the
    batch's snapshot -- is only a full bucket gone: the next rate claim creates it again.
    """

    def __init__(self, n: Names) -> None:
        #: $1 batch size. Slot rows with none taken and no parked job (``soniq_jobs_parked_idx``).
        self.prune_slots = _prune_keyed(
            n.slots, n, "i.active = 0", key="concurrency_key", hold="slot", limit="$1")
        #: $1 now (NULL: the database clock), $2 the longest rate period (seconds), $3 batch
        #: size. Buckets full again (refilled a period ago or never), not held, whose key has no
        #: queued rate-limited job (``soniq_jobs_rated_idx``).
        self.prune_buckets = _prune_keyed(
            n.rate_buckets, n,
            "(i.refilled_at IS NULL OR i.refilled_at < COALESCE($1::timestamptz, now())"
            " - $2::float8 * interval '1 second')"
            " AND (i.blocked_until IS NULL OR i.blocked_until <= COALESCE($1::timestamptz, now()))",
            key="rate_key", hold="rate", limit="$3")
        #: $1 now (NULL: the database clock), $2 batch size. Dedup keys that block nothing
        #: (see soniq/backends/keys.py): their window has passed and their job has ended or is
        #: gone. Locked SKIP LOCKED (an insert holding one keeps it); a key taken in the last
        #: minute is kept, so one taken since this batch's snapshot (whose job that snapshot
        #: cannot see) is never mistaken for one whose job is gone.
        self.prune_keys = f"""
DELETE FROM {n.unique_keys}
WHERE key = ANY (ARRAY(
    SELECT i.key FROM {n.unique_keys} AS i
    WHERE (i.expires_at IS NULL OR i.expires_at <= COALESCE($1::timestamptz, now()))
      AND i.taken_at < COALESCE($1::timestamptz, now()) - interval '1 minute'
      AND NOT EXISTS (SELECT 1 FROM {n.jobs} AS j
                      WHERE j.id = i.job_id AND j.status IN ('waiting', 'queued', 'processing'))
    LIMIT $2::integer
    FOR UPDATE OF i SKIP LOCKED
))
"""
        #: $1 now (NULL: the database clock), $2 retention (seconds), $3 batch size. Audit
        #: entries older than the retention (nothing updates them: no lock to take).
        self.prune_audit = f"""
DELETE FROM {n.audit}
WHERE id = ANY (ARRAY(
    SELECT id FROM {n.audit}
    WHERE at < COALESCE($1::timestamptz, now()) - $2::float8 * interval '1 second'
    LIMIT $3::integer
))
"""


control_sql = functools.cache(ControlSql)


async def prune_control(pool: Any, c: ControlSql, audit_retention: float, now: datetime | None,
                        statement_timeout: str) -> int:
    """``StorageBackend.prune_control``: idle slot rows, full rate buckets, dedup keys that block
    nothing and old audit entries (``audit_retention`` 0: none), in batches."""
    pruned = (await prune_in_batches(pool, statement_timeout, c.prune_slots,
                                     batch=PRUNE_BATCH_SIZE)
              + await prune_in_batches(pool, statement_timeout, c.prune_keys, now,
                                       batch=PRUNE_BATCH_SIZE)
              + await prune_in_batches(pool, statement_timeout, c.prune_buckets, now,
                                       LONGEST_PERIOD, batch=PRUNE_BATCH_SIZE))
    if audit_retention:
        pruned += await prune_in_batches(pool, statement_timeout, c.prune_audit, now,
                                         audit_retention, batch=PRUNE_BATCH_SIZE)
    return pruned


async def prune_in_batches(pool: Any, statement_timeout: str, statement: str, *params: Any,
                           batch: int) -> int:
    """Run ``statement`` (a ``DELETE`` taking ``params``, then ``batch``) once per transaction
    until a batch comes back short; how many rows it deleted."""
    total = 0
    while True:
        async with maintenance(pool, statement_timeout) as conn:
            status = await conn.execute(statement, *params, batch)
        deleted = int(status.rpartition(" ")[2])
        total += deleted
        if deleted < batch:
            return total
