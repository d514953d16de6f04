"""The dashboard's store on PostgreSQL (:class:`~soniq.backends.stores.DashboardStore`): filtered
job listing, per-minute rollups of finished jobs (``soniq_stats_minute``) and table facts.

Filters are built by :func:`~soniq.backends.postgres.where.where` (values are bind parameters).
Every driver call goes through
:func:`soniq.backends._bridge.call` and driver errors through the backend's translator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.base import JOB_COLUMNS, job_record
from soniq.backends.postgres.maintenance import maintenance
from soniq.backends.postgres.where import where
from soniq.backends.stores import StatsBucket, StorageHealth
from soniq.ids import is_uuid

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from soniq.backends.postgres.errors import Translator
    from soniq.types import JobRecord

__all__ = ["PostgresDashboardStore"]

_COLUMNS = ", ".join(JOB_COLUMNS)

#: $1 since. Counts per minute and queue; a stored count is only ever raised.
ROLLUP = """
INSERT INTO soniq_stats_minute AS s (bucket, queue, done, dead_letter, cancelled)
SELECT date_trunc('minute', finished_at), queue,
       count(*) FILTER (WHERE status = 'done'),
       count(*) FILTER (WHERE status = 'dead_letter'),
       count(*) FILTER (WHERE status = 'cancelled')
FROM soniq_jobs
WHERE finished_at >= $1::timestamptz AND status IN ('done', 'dead_letter', 'cancelled')
GROUP BY 1, 2
ON CONFLICT (bucket, queue) DO UPDATE SET
    done = GREATEST(s.done, EXCLUDED.done),
    dead_letter = GREATEST(s.dead_letter, EXCLUDED.dead_letter),
    cancelled = GREATEST(s.cancelled, EXCLUDED.cancelled)
"""

PRUNE_STATS = "DELETE FROM soniq_stats_minute WHERE bucket < $1::timestamptz"

STATS = """
SELECT bucket, queue, done, dead_letter, cancelled FROM soniq_stats_minute
WHERE bucket >= $1::timestamptz ORDER BY bucket, queue
"""

HEALTH = """
SELECT (SELECT max(version) FROM soniq_migrations) AS version,
       pg_total_relation_size(to_regclass('soniq_jobs')) AS size,
       (SELECT greatest(reltuples, 0)::bigint FROM pg_class
        WHERE oid = to_regclass('soniq_jobs')) AS estimate,
       (SELECT n_dead_tup FROM pg_stat_user_tables
        WHERE relid = to_regclass('soniq_jobs')) AS dead
"""


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` escaped (the default escape ``\\``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class PostgresDashboardStore:
    """The dashboard's reads in PostgreSQL (reached as ``PostgresBackend.dashboard``); the
    rollup runs under ``maintenance_timeout`` (see :mod:`.maintenance`)."""

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 maintenance_timeout: str) -> None:
        self._ready = ready
        self._errors = errors
        self._maintenance_timeout = maintenance_timeout

    async def search_jobs(self, *, queue: str | None, status: str | None, job_name: str | None,
                          since: datetime | None, until: datetime | None, before: str | None,
                          limit: int) -> list[JobRecord]:
        if before is not None and not is_uuid(before):
            return []
        clause, params = where(
            ("queue = {}::text", queue), ("status = {}::text", status),
            ("job_name ILIKE {}::text", like_pattern(job_name) if job_name else None),
            ("created_at >= {}::timestamptz", since), ("created_at < {}::timestamptz", until),
            ("id < {}::uuid", before), first=2)
        query = f"SELECT {_COLUMNS} FROM soniq_jobs{clause} ORDER BY id DESC LIMIT $1::integer"
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, query, limit, *params)
        return [job_record(row) for row in rows]

    async def rollup(self, *, since: datetime, keep_after: datetime) -> None:
        with self._errors:
            pool = await self._ready()
            await call(_rollup, pool, since, keep_after, self._maintenance_timeout)

    async def stats(self, *, since: datetime) -> list[StatsBucket]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, STATS, since)
        return [StatsBucket(bucket=row["bucket"], queue=row["queue"], done=row["done"],
                            dead_letter=row["dead_letter"], cancelled=row["cancelled"])
                for row in rows]

    async def health(self) -> StorageHealth:
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, HEALTH)
        return StorageHealth(schema_version=row["version"], jobs_table_bytes=row["size"],
                             jobs_rows=row["estimate"], dead_tuples=row["dead"])


async def _rollup(pool: Any, since: datetime, keep_after: datetime, statement_timeout: str) -> None:
    """Runs on the driver's loop: the rollup and the pruning of old buckets, in one transaction."""
    async with maintenance(pool, statement_timeout) as conn:
        await conn.execute(ROLLUP, since)
        await conn.execute(PRUNE_STATS, keep_after)
