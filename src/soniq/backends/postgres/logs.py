"""The job-log store on PostgreSQL (:class:`~soniq.backends.stores.LogStore`): its SQL and the
calls that run it.

A batch is one statement over arrays (``unnest``), never one per record, inserted in capture
order (``WITH ORDINALITY``) so ids follow it. Rows are inserted only
for jobs that still exist; the foreign key cascades a job's deletion (delete, prune, dead-letter
purge) to its logs. Every driver call goes through :func:`soniq.backends._bridge.call` and
driver errors through the backend's translator.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.postgres.where import where
from soniq.backends.stores import JobLogRecord

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from datetime import datetime

    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.names import Names

__all__ = ["PostgresLogStore"]

_COLUMNS = ("job_id, job_name, queue, attempt, level, levelno, logger, message, exception, "
            "created_at")



class _Sql:
    """This store's statements for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        self.select = (f"SELECT id, job_id::text AS job_id, {_COLUMNS.removeprefix('job_id, ')} "
                       f"FROM {n.job_logs}")
        self.insert = f"""
INSERT INTO {n.job_logs} ({_COLUMNS})
SELECT {_COLUMNS}
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::integer[], $5::text[], $6::integer[],
            $7::text[], $8::text[], $9::text[], $10::timestamptz[])
     WITH ORDINALITY AS u({_COLUMNS}, n)
WHERE EXISTS (SELECT 1 FROM {n.jobs} AS j WHERE j.id = u.job_id)
ORDER BY u.n
"""


_sql = functools.cache(_Sql)


def _record(row: Mapping[str, Any]) -> JobLogRecord:
    return JobLogRecord(job_id=row["job_id"], job_name=row["job_name"], queue=row["queue"],
                        attempt=row["attempt"], level=row["level"], levelno=row["levelno"],
                        logger=row["logger"], message=row["message"],
                        exception=row["exception"], created_at=row["created_at"], id=row["id"])


class PostgresLogStore:
    """Job logs in PostgreSQL (reached as ``PostgresBackend.logs``).

    ``ready`` returns the backend's pool (opening it on first use); ``errors`` is the backend's
    driver-error translator; ``names`` says where the logs are.
    """

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 names: Names) -> None:
        self._ready = ready
        self._errors = errors
        self._sql = _sql(names)

    async def insert_logs(self, records: Sequence[JobLogRecord]) -> int:
        if not records:
            return 0
        columns: tuple[list[Any], ...] = tuple([] for _ in range(10))
        for r in records:
            for column, value in zip(columns, (
                    r.job_id, r.job_name, r.queue, r.attempt, r.level, r.levelno, r.logger,
                    r.message, r.exception, r.created_at), strict=True):
                column.append(value)
        with self._errors:
            pool = await self._ready()
            status = await call(pool.execute, self._sql.insert, *columns)
        return int(str(status).rsplit(" ", 1)[-1])

    async def for_job(self, job_id: str) -> builtins.list[JobLogRecord]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, f"{self._sql.select} WHERE job_id = $1::uuid ORDER BY id",
                              job_id)
        return [_record(row) for row in rows]

    async def search(self, query: str | None, *, job_id: str | None, min_levelno: int | None,
                     since: datetime | None, limit: int) -> builtins.list[JobLogRecord]:
        clause, params = where(("strpos(lower(message), lower({}::text)) > 0", query or None),
                               ("job_id = {}::uuid", job_id), ("levelno >= {}::integer", min_levelno),
                               ("created_at >= {}::timestamptz", since), first=2)
        statement = f"{self._sql.select}{clause} ORDER BY id DESC LIMIT $1::bigint"
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, statement, limit, *params)
        return [_record(row) for row in rows]
