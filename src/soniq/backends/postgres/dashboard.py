"""The dashboard's store on PostgreSQL (:class:`~soniq.backends.stores.DashboardStore`): filtered
job listing, per-minute rollups of finished jobs (``soniq_stats_minute``) and table facts.

Filters are built by :func:`~soniq.backends.postgres.where.where` (values are bind parameters).
Every driver call goes through
:func:`soniq.backends._bridge.call` and driver errors through the backend's translator.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.base import JOB_COLUMNS, STATUSES, job_record, queue_stats_row
from soniq.backends.postgres.maintenance import maintenance
from soniq.backends.postgres.where import where
from soniq.backends.stores import JobSearch, QueueCounts, StatsBucket, StorageHealth
from soniq.ids import is_uuid

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.names import Names
    from soniq.types import QueueStats

__all__ = ["PostgresDashboardStore"]

_COLUMNS = ", ".join(JOB_COLUMNS)

#: Rows read to estimate done and cancelled counts on a large table.
SAMPLE_ROWS = 20_000


class _Sql:
    """This store's statements for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        self.jobs = n.jobs
        #: $1 since. Counts per minute and queue; a stored count is only ever raised.
        self.rollup = f"""
INSERT INTO {n.stats_minute} AS s (bucket, queue, done, dead_letter, cancelled)
SELECT date_trunc('minute', finished_at), queue,
       count(*) FILTER (WHERE status = 'done'),
       count(*) FILTER (WHERE status = 'dead_letter'),
       count(*) FILTER (WHERE status = 'cancelled')
FROM {n.jobs}
WHERE finished_at >= $1::timestamptz AND status IN ('done', 'dead_letter', 'cancelled')
GROUP BY 1, 2
ON CONFLICT (bucket, queue) DO UPDATE SET
    done = GREATEST(s.done, EXCLUDED.done),
    dead_letter = GREATEST(s.dead_letter, EXCLUDED.dead_letter),
    cancelled = GREATEST(s.cancelled, EXCLUDED.cancelled)
"""

        self.prune_stats = f"DELETE FROM {n.stats_minute} WHERE bucket < $1::timestamptz"

        self.stats = f"""
SELECT bucket, queue, done, dead_letter, cancelled FROM {n.stats_minute}
WHERE bucket >= $1::timestamptz ORDER BY bucket, queue
"""

        self.health = f"""
SELECT (SELECT max(version) FROM {n.migrations}) AS version,
       pg_total_relation_size(to_regclass('{n.jobs}')) AS size,
       (SELECT greatest(reltuples, 0)::bigint FROM pg_class
        WHERE oid = to_regclass('{n.jobs}')) AS estimate,
       (SELECT n_dead_tup FROM pg_stat_user_tables
        WHERE relid = to_regclass('{n.jobs}')) AS dead
"""

        #: $1 offset (scan_limit - 1), $2 the cursor: the oldest id a bounded search examined,
        #: when there are that many. Keyed by whether a cursor is given.
        self.scanned_to = {
            False: f"SELECT id FROM {n.jobs} ORDER BY id DESC OFFSET $1::integer LIMIT 1",
            True: f"SELECT id FROM {n.jobs} WHERE id < $2::uuid ORDER BY id DESC "
                  "OFFSET $1::integer LIMIT 1",
        }

        #: The planner's row count of soniq_jobs (-1 before its first ANALYZE).
        self.row_estimate = ("SELECT reltuples::float8 FROM pg_class "
                             f"WHERE oid = to_regclass('{n.jobs}')")

        #: $1 percent of pages to sample. Queued, processing and dead-lettered jobs are counted
        #: exactly through their partial indexes (their number is the backlog, the running jobs
        #: and the dead-letter queue, not the history); done and cancelled ones from a block
        #: sample, scaled up.
        self.estimated_counts = f"""
SELECT queue, status, count(*)::float8 AS n FROM {n.jobs} WHERE status = 'queued'
GROUP BY queue, status
UNION ALL
SELECT queue, status, count(*)::float8 FROM {n.jobs} WHERE status = 'processing'
GROUP BY queue, status
UNION ALL
SELECT queue, status, count(*)::float8 FROM {n.jobs} WHERE status = 'dead_letter'
GROUP BY queue, status
UNION ALL
SELECT queue, status, count(*) * 100.0::float8 / $1::float8
FROM {n.jobs} TABLESAMPLE SYSTEM ($1::float8)
WHERE status IN ('done', 'cancelled')
GROUP BY queue, status
"""


_sql = functools.cache(_Sql)

_STATUSES = STATUSES


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` escaped (the default escape ``\\``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class PostgresDashboardStore:
    """The dashboard's reads in PostgreSQL (reached as ``PostgresBackend.dashboard``); the
    rollup runs under ``maintenance_timeout`` (see :mod:`.maintenance`)."""

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 maintenance_timeout: str,
                 queue_stats: Callable[[], Awaitable[list[QueueStats]]], names: Names) -> None:
        self._sql = _sql(names)
        self._ready = ready
        self._errors = errors
        self._maintenance_timeout = maintenance_timeout
        self._queue_stats = queue_stats

    async def search_jobs(self, *, queue: str | None, status: str | None, job_name: str | None,
                          since: datetime | None, until: datetime | None, before: str | None,
                          limit: int, scan_limit: int) -> JobSearch:
        if before is not None and not is_uuid(before):
            return JobSearch([])
        window: list[Any] = [] if before is None else [before]
        cursor = "" if before is None else " WHERE id < $3::uuid"
        clause, params = where(
            ("queue = {}::text", queue), ("status = {}::text", status),
            ("job_name ILIKE {}::text", like_pattern(job_name) if job_name else None),
            ("created_at >= {}::timestamptz", since), ("created_at < {}::timestamptz", until),
            first=3 + len(window))
        # The filters read only the newest scan_limit jobs (before the cursor), walked newest
        # first down the primary key: the inner LIMIT is read lazily, so a page that fills early
        # stops early, and one that does not stops after scan_limit rows, never a full scan.
        query = (f"SELECT {_COLUMNS} FROM (SELECT * FROM {self._sql.jobs}{cursor} "
                 f"ORDER BY id DESC LIMIT $2::integer) AS recent{clause} ORDER BY id DESC "
                 "LIMIT $1::integer")
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, query, limit, scan_limit, *window, *params)
            scanned_to = None
            if len(rows) < limit:  # the page did not fill: did the scan stop at its limit?
                last = await call(pool.fetchval, self._sql.scanned_to[before is not None],
                                  scan_limit - 1, *window)
                scanned_to = None if last is None else str(last)
        return JobSearch([job_record(row) for row in rows], scanned_to=scanned_to)

    async def queue_counts(self, *, exact_up_to: int) -> QueueCounts:
        with self._errors:
            pool = await self._ready()
            estimate = await call(pool.fetchval, self._sql.row_estimate)
            if estimate is None or estimate < 0 or estimate <= exact_up_to:
                return QueueCounts(await self._queue_stats())
            percent = min(100.0, 100.0 * SAMPLE_ROWS / estimate)
            rows = await call(pool.fetch, self._sql.estimated_counts, percent)
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            per_queue = counts.setdefault(row["queue"], dict.fromkeys(_STATUSES, 0))
            per_queue[row["status"]] = round(row["n"])
        return QueueCounts([queue_stats_row(queue, c) for queue, c in sorted(counts.items())],
                           estimated=True)

    async def rollup(self, *, since: datetime, keep_after: datetime) -> None:
        with self._errors:
            pool = await self._ready()
            await call(_rollup, pool, self._sql, since, keep_after, self._maintenance_timeout)

    async def stats(self, *, since: datetime) -> list[StatsBucket]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.stats, since)
        return [StatsBucket(bucket=row["bucket"], queue=row["queue"], done=row["done"],
                            dead_letter=row["dead_letter"], cancelled=row["cancelled"])
                for row in rows]

    async def health(self) -> StorageHealth:
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, self._sql.health)
        return StorageHealth(schema_version=row["version"], jobs_table_bytes=row["size"],
                             jobs_rows=row["estimate"], dead_tuples=row["dead"])


async def _rollup(pool: Any, q: _Sql, since: datetime, keep_after: datetime,
                  statement_timeout: str) -> None:
    """Runs on the driver's loop: the rollup and the pruning of old buckets, in one transaction."""
    async with maintenance(pool, statement_timeout) as conn:
        await conn.execute(q.rollup, since)
        await conn.execute(q.prune_stats, keep_after)
