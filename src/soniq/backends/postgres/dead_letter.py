"""The dead-letter store on PostgreSQL (:class:`~soniq.backends.stores.DeadLetterStore`): its SQL
and the calls that run it.

Dead-lettered jobs are rows of ``soniq_jobs`` with ``status = 'dead_letter'``; every statement
that changes or removes one repeats that guard, so losing a race is "not applied". Filters are
built by :func:`~soniq.backends.postgres.where.where` (values are bind parameters). Every driver
call goes through
:func:`soniq.backends._bridge.call` and driver errors through the backend's translator.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.base import JOB_COLUMNS, job_record
from soniq.backends.postgres.where import where
from soniq.ids import is_uuid

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.names import Names
    from soniq.types import JobRecord

__all__ = ["PostgresDeadLetterStore"]

#: Rows deleted per purge statement: short transactions, few row locks held at once.
PURGE_BATCH_SIZE = 5_000

_COLUMNS = ", ".join(JOB_COLUMNS)
_DEAD = "status = 'dead_letter'"
_NEWEST_FIRST = "ORDER BY finished_at DESC, id DESC"  # the dead-letter index order

#: Back to the queue as if new, keeping the id and the errors as history.
_REQUEUE_SET = (
    "SET status = 'queued', attempts = 0, scheduled_at = now(), updated_at = now(), "
    "started_at = NULL, finished_at = NULL, expires_at = NULL, result = NULL, worker_id = NULL, "
    "lease_id = NULL, cancel_requested = false, progress = NULL, checkpoint = NULL, "
    # A limited job comes back parked: a hand-over or the reconciliation gives it a slot; a
    # rate-limited one waits for its bucket again.
    "hold = CASE WHEN concurrency_key IS NOT NULL THEN 'slot' "
    "WHEN rate_key IS NOT NULL THEN 'rate' END"
)



class _Sql:
    """This store's statements for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        self.jobs = n.jobs
        self.channel = n.jobs_channel
        #: $1 id.
        self.get_dead = f"SELECT {_COLUMNS} FROM {n.jobs} WHERE id = $1::uuid AND {_DEAD}"
        #: $1 id. Returns the job's queue when replayed, and wakes that queue's listeners.
        self.replay = f"""
WITH replayed AS (
    UPDATE {n.jobs} {_REQUEUE_SET}
    WHERE id = $1::uuid AND {_DEAD}
    RETURNING queue
)
SELECT queue, pg_notify('{n.jobs_channel}', queue) AS woken FROM replayed
"""
        #: $1 id.
        self.delete_dead = f"DELETE FROM {n.jobs} WHERE id = $1::uuid AND {_DEAD} RETURNING id"
        #: Keyed by whether a cutoff is given.
        self.purge = {cutoff: self._purge(cutoff) for cutoff in (False, True)}

    def replay_matching(self, where: str) -> str:
        """$1 limit (NULL: all), then the filters. One NOTIFY per distinct queue, never per row;
        SKIP LOCKED leaves rows another transaction is changing to that transaction."""
        return f"""
WITH picked AS (
    SELECT id FROM {self.jobs}{where} {_NEWEST_FIRST} LIMIT $1::bigint FOR UPDATE SKIP LOCKED
), replayed AS (
    UPDATE {self.jobs} AS j {_REQUEUE_SET}
    FROM picked
    WHERE j.id = picked.id AND j.{_DEAD}
    RETURNING j.id, j.queue
), woken AS (
    SELECT pg_notify('{self.channel}', due.queue) FROM (SELECT DISTINCT queue FROM replayed) AS due
)
SELECT id, queue, (SELECT count(*) FROM woken) AS woken FROM replayed
"""

    def _purge(self, with_cutoff: bool) -> str:
        """$1 batch size, $2 cutoff (when given)."""
        older = " AND finished_at < $2::timestamptz" if with_cutoff else ""
        return (
            f"DELETE FROM {self.jobs} WHERE {_DEAD} AND id IN (SELECT id FROM {self.jobs} "
            f"WHERE {_DEAD}{older} LIMIT $1::integer FOR UPDATE SKIP LOCKED)"
        )


_sql = functools.cache(_Sql)


def _where(queue: str | None, job_name: str | None, since: datetime | None,
           first: int) -> tuple[str, list[Any]]:
    """The WHERE clause (dead-lettered, plus the given filters, numbered from ``$first``)."""
    return where(("queue = {}::text", queue), ("job_name = {}::text", job_name),
                 ("finished_at >= {}::timestamptz", since), always=(_DEAD,), first=first)


class PostgresDeadLetterStore:
    """Dead-lettered jobs in PostgreSQL (reached as ``PostgresBackend.dead_letters``).

    ``ready`` returns the backend's pool (opening it on first use); ``errors`` is the backend's
    driver-error translator; ``names`` says where the jobs are.
    """

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 names: Names) -> None:
        self._ready = ready
        self._errors = errors
        self._sql = _sql(names)

    async def list_dead(self, *, queue: str | None, job_name: str | None,
                        since: datetime | None, limit: int, offset: int) -> list[JobRecord]:
        where, params = _where(queue, job_name, since, first=3)
        query = f"SELECT {_COLUMNS} FROM {self._sql.jobs}{where} {_NEWEST_FIRST} LIMIT $1 OFFSET $2"
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, query, limit, offset, *params)
        return [job_record(row) for row in rows]

    async def get_dead(self, job_id: str) -> JobRecord | None:
        if not is_uuid(job_id):
            return None
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, self._sql.get_dead, job_id)
        return None if row is None else job_record(row)

    async def count_dead(self, *, queue: str | None, job_name: str | None) -> int:
        where, params = _where(queue, job_name, None, first=1)
        with self._errors:
            pool = await self._ready()
            count = await call(pool.fetchval, f"SELECT count(*) FROM {self._sql.jobs}{where}",
                               *params)
        return int(count)

    async def replay(self, job_id: str) -> str | None:
        if not is_uuid(job_id):
            return None
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, self._sql.replay, job_id)
        return None if row is None else str(row["queue"])

    async def replay_matching(self, *, queue: str | None, job_name: str | None,
                              since: datetime | None, limit: int | None) -> list[tuple[str, str]]:
        where, params = _where(queue, job_name, since, first=2)
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.replay_matching(where), limit,
                              *params)
        return [(str(row["id"]), str(row["queue"])) for row in rows]

    async def delete_dead(self, job_id: str) -> bool:
        if not is_uuid(job_id):
            return False
        with self._errors:
            pool = await self._ready()
            return await call(pool.fetchval, self._sql.delete_dead, job_id) is not None

    async def purge(self, *, finished_before: datetime | None) -> int:
        with self._errors:
            pool = await self._ready()
            return await call(_purge, pool, self._sql.purge[finished_before is not None],
                              finished_before)


async def _purge(pool: Any, statement: str, finished_before: datetime | None) -> int:
    """Delete in batches, each its own short transaction (runs on the driver's loop)."""
    params = () if finished_before is None else (finished_before,)
    total = 0
    while True:
        status = await pool.execute(statement, PURGE_BATCH_SIZE, *params)
        deleted = int(status.rpartition(" ")[2])
        total += deleted
        if deleted < PURGE_BATCH_SIZE:
            return total
