"""The job-log store on SQLite (:class:`~soniq.backends.stores.LogStore`): its SQL and the calls
that run it.

A batch is one ``BEGIN IMMEDIATE`` transaction. Each row is inserted only while its job exists
(the foreign key cascades the job's deletion to its logs, and would refuse a late record of a
deleted job). Every call goes through :meth:`SqliteDatabase.run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.backends.sqlite import sql
from soniq.backends.sqlite.where import where
from soniq.backends.stores import JobLogRecord

if TYPE_CHECKING:
    import builtins
    from collections.abc import Sequence
    from datetime import datetime

    from soniq.backends.sqlite.database import SqliteDatabase

__all__ = ["SqliteLogStore"]

_COLUMNS = ("job_id, job_name, queue, attempt, level, levelno, logger, message, exception, "
            "created_at")

SELECT = f"SELECT {_COLUMNS}, id FROM soniq_job_logs"

INSERT = (
    f"INSERT INTO soniq_job_logs ({_COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 "
    "WHERE EXISTS (SELECT 1 FROM soniq_jobs WHERE id = ?1) RETURNING id"
)


def _record(row: Sequence[Any]) -> JobLogRecord:
    (job_id, job_name, queue, attempt, level, levelno, logger_name, message, exception,
     created_at, row_id) = row
    return JobLogRecord(job_id=job_id, job_name=job_name, queue=queue, attempt=attempt,
                        level=level, levelno=levelno, logger=logger_name, message=message,
                        exception=exception, created_at=sql.from_db(created_at), id=row_id)


class SqliteLogStore:
    """Job logs in one SQLite file (reached as ``SqliteBackend.logs``)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def insert_logs(self, records: Sequence[JobLogRecord]) -> int:
        if not records:
            return 0
        return await self._db.run(self._insert, records)

    async def _insert(self, records: Sequence[JobLogRecord]) -> int:
        written = 0
        async with self._db.transaction() as conn:
            for r in records:
                rows = await conn.execute_fetchall(INSERT, (
                    r.job_id, r.job_name, r.queue, r.attempt, r.level, r.levelno, r.logger,
                    r.message, r.exception, sql.to_db(r.created_at)))
                written += len(list(rows))
        return written

    async def for_job(self, job_id: str) -> builtins.list[JobLogRecord]:
        rows = await self._db.run(self._db.read, f"{SELECT} WHERE job_id = ? ORDER BY id",
                                  (job_id,))
        return [_record(row) for row in rows]

    async def search(self, query: str | None, *, job_id: str | None, min_levelno: int | None,
                     since: datetime | None, limit: int) -> builtins.list[JobLogRecord]:
        clause, params = where(("instr(lower(message), lower(?)) > 0", query or None),
                               ("job_id = ?", job_id), ("levelno >= ?", min_levelno),
                               ("created_at >= ?", since))
        rows = await self._db.run(self._db.read, f"{SELECT}{clause} ORDER BY id DESC LIMIT ?",
                                  (*params, limit))
        return [_record(row) for row in rows]
