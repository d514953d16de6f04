"""The dead-letter store on SQLite (:class:`~soniq.backends.stores.DeadLetterStore`): its SQL and
the calls that run it.

Dead-lettered jobs are rows of ``soniq_jobs`` with ``status = 'dead_letter'``; every statement
that changes or removes one repeats that guard, so a job replayed or deleted by someone else in
the meantime is "not applied". Filters are built by
:func:`~soniq.backends.sqlite.where.where` (values are bind parameters). Every call goes through :meth:`SqliteDatabase.run` (the bridge).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.backends.sqlite import sql
from soniq.backends.sqlite.where import where
from soniq.serialization import utc_now

if TYPE_CHECKING:
    from datetime import datetime

    from soniq.backends.sqlite.database import SqliteDatabase
    from soniq.types import JobRecord

__all__ = ["SqliteDeadLetterStore"]

# Rows deleted per purge statement: short write locks, so claims slip in between batches.
_PURGE_BATCH = 1000

_DEAD = "status = 'dead_letter'"
_NEWEST_FIRST = "ORDER BY finished_at DESC, id DESC"

#: Back to the queue as if new, keeping the id and the errors as history. ?1 now, ?2 now.
_REQUEUE_SET = (
    "SET status = 'queued', attempts = 0, scheduled_at = ?, updated_at = ?, started_at = NULL, "
    "finished_at = NULL, expires_at = NULL, result = NULL, worker_id = NULL, lease_id = NULL, "
    "cancel_requested = 0, progress = NULL, checkpoint = NULL, "
    # A limited job comes back parked: a hand-over or the reconciliation gives it a slot.
    "hold = CASE WHEN concurrency_key IS NULL THEN NULL ELSE 'slot' END"
)

REPLAY = f"UPDATE soniq_jobs {_REQUEUE_SET} WHERE id = ? AND {_DEAD} RETURNING queue"

DELETE_DEAD = f"DELETE FROM soniq_jobs WHERE id = ? AND {_DEAD} RETURNING id"


def _where(queue: str | None, job_name: str | None,
           since: datetime | None) -> tuple[str, list[Any]]:
    """The WHERE clause (dead-lettered, plus the given filters) and its parameters."""
    return where(("queue = ?", queue), ("job_name = ?", job_name), ("finished_at >= ?", since),
                 always=(_DEAD,))



class SqliteDeadLetterStore:
    """Dead-lettered jobs in one SQLite file (reached as ``SqliteBackend.dead_letters``)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def list_dead(self, *, queue: str | None, job_name: str | None,
                        since: datetime | None, limit: int, offset: int) -> list[JobRecord]:
        where, params = _where(queue, job_name, since)
        rows = await self._db.run(
            self._db.read, f"{sql.JOB_SELECT}{where} {_NEWEST_FIRST} LIMIT ? OFFSET ?",
            (*params, limit, offset))
        return [sql.job_row(row) for row in rows]

    async def get_dead(self, job_id: str) -> JobRecord | None:
        if not isinstance(job_id, str):
            return None
        rows = await self._db.run(self._db.read, f"{sql.JOB_SELECT} WHERE id = ? AND {_DEAD}",
                                  (job_id,))
        return sql.job_row(rows[0]) if rows else None

    async def count_dead(self, *, queue: str | None, job_name: str | None) -> int:
        where, params = _where(queue, job_name, None)
        [(count,)] = await self._db.run(self._db.read, f"SELECT count(*) FROM soniq_jobs{where}",
                                        params)
        return int(count)

    async def replay(self, job_id: str) -> str | None:
        if not isinstance(job_id, str):
            return None
        now = sql.to_db(utc_now())
        rows = await self._db.run(self._db.write, REPLAY, (now, now, job_id))
        return str(rows[0][0]) if rows else None

    async def replay_matching(self, *, queue: str | None, job_name: str | None,
                              since: datetime | None, limit: int | None) -> list[tuple[str, str]]:
        where, params = _where(queue, job_name, since)
        now = sql.to_db(utc_now())
        statement = (
            f"UPDATE soniq_jobs {_REQUEUE_SET} WHERE {_DEAD} AND id IN "
            f"(SELECT id FROM soniq_jobs{where} {_NEWEST_FIRST} LIMIT ?) RETURNING id, queue"
        )
        # LIMIT -1 is SQLite for "no limit".
        rows = await self._db.run(self._db.write, statement,
                                  (now, now, *params, -1 if limit is None else limit))
        return [(str(job_id), str(queue_name)) for job_id, queue_name in rows]

    async def delete_dead(self, job_id: str) -> bool:
        if not isinstance(job_id, str):
            return False
        return bool(await self._db.run(self._db.write, DELETE_DEAD, (job_id,)))

    async def purge(self, *, finished_before: datetime | None) -> int:
        cutoff = None if finished_before is None else sql.to_db(finished_before)
        return await self._db.run(self._purge, cutoff)

    async def _purge(self, cutoff: str | None) -> int:
        older = "" if cutoff is None else " AND finished_at < ?"
        statement = (
            f"DELETE FROM soniq_jobs WHERE {_DEAD} AND id IN "
            f"(SELECT id FROM soniq_jobs WHERE {_DEAD}{older} LIMIT ?) RETURNING id"
        )
        params: tuple[Any, ...] = (_PURGE_BATCH,) if cutoff is None else (cutoff, _PURGE_BATCH)
        total = 0
        while True:
            deleted = len(await self._db.write(statement, params))
            total += deleted
            if deleted < _PURGE_BATCH:
                return total
