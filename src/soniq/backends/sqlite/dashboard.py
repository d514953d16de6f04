"""The dashboard's store on SQLite (:class:`~soniq.backends.stores.DashboardStore`): filtered job
listing, per-minute rollups of finished jobs (``soniq_stats_minute``) and storage facts.

Filters are built by :func:`~soniq.backends.sqlite.where.where` (values are bind parameters).
Timestamps are the fixed-width UTC text of migration 1, so a minute's bucket is the first 16
characters of ``finished_at`` and text comparison is time order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from soniq.backends.sqlite import sql
from soniq.backends.sqlite.where import where
from soniq.backends.stores import JobSearch, QueueCounts, StatsBucket, StorageHealth

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from soniq.backends.sqlite.database import SqliteDatabase
    from soniq.types import QueueStats

__all__ = ["SqliteDashboardStore"]

#: ?1 since. Counts per minute and queue; a stored count is only ever raised.
ROLLUP = """
INSERT INTO soniq_stats_minute (bucket, queue, done, dead_letter, cancelled)
SELECT substr(finished_at, 1, 16) || ':00.000000Z', queue,
       sum(status = 'done'), sum(status = 'dead_letter'), sum(status = 'cancelled')
FROM soniq_jobs
WHERE finished_at >= ? AND status IN ('done', 'dead_letter', 'cancelled')
GROUP BY 1, 2
ON CONFLICT (bucket, queue) DO UPDATE SET
    done = max(done, excluded.done),
    dead_letter = max(dead_letter, excluded.dead_letter),
    cancelled = max(cancelled, excluded.cancelled)
"""

PRUNE_STATS = "DELETE FROM soniq_stats_minute WHERE bucket < ?"

STATS = ("SELECT bucket, queue, done, dead_letter, cancelled FROM soniq_stats_minute "
         "WHERE bucket >= ? ORDER BY bucket, queue")

HEALTH = """
SELECT (SELECT max(version) FROM soniq_migrations),
       (SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()),
       (SELECT count(*) FROM soniq_jobs)
"""


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` escaped (``ESCAPE '\\'``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqliteDashboardStore:
    """The dashboard's reads in one SQLite file (reached as ``SqliteBackend.dashboard``)."""

    def __init__(self, db: SqliteDatabase,
                 queue_stats: Callable[[], Awaitable[list[QueueStats]]]) -> None:
        self._db = db
        self._queue_stats = queue_stats

    async def search_jobs(self, *, queue: str | None, status: str | None, job_name: str | None,
                          since: datetime | None, until: datetime | None, before: str | None,
                          limit: int, scan_limit: int) -> JobSearch:
        clause, params = where(
            ("queue = ?", queue), ("status = ?", status),
            ("job_name LIKE ? ESCAPE '\\'", like_pattern(job_name) if job_name else None),
            ("created_at >= ?", since), ("created_at < ?", until))
        # The filters read only the newest scan_limit jobs (before the cursor), newest first.
        cursor = " WHERE id < ?" if before else ""
        window = (before,) if before else ()
        rows = await self._db.run(
            self._db.read,
            f"SELECT * FROM ({sql.JOB_SELECT}{cursor} ORDER BY id DESC LIMIT ?){clause} "
            "ORDER BY id DESC LIMIT ?", (*window, scan_limit, *params, limit))
        scanned_to = None
        if len(rows) < limit:  # the page did not fill: did the scan stop at its limit?
            last = await self._db.run(
                self._db.read,
                f"SELECT id FROM soniq_jobs{cursor} ORDER BY id DESC LIMIT 1 OFFSET ?",
                (*window, scan_limit - 1))
            scanned_to = last[0][0] if last else None
        return JobSearch([sql.job_row(row) for row in rows], scanned_to=scanned_to)

    async def queue_counts(self, *, exact_up_to: int) -> QueueCounts:
        """Exact always: the (queue, status) index makes the count a covering index scan."""
        return QueueCounts(await self._queue_stats())

    async def rollup(self, *, since: datetime, keep_after: datetime) -> None:
        await self._db.run(self._db.write, ROLLUP, (sql.to_db(since),))
        await self._db.run(self._db.write, PRUNE_STATS, (sql.to_db(keep_after),))

    async def stats(self, *, since: datetime) -> list[StatsBucket]:
        rows = await self._db.run(self._db.read, STATS, (sql.to_db(since),))
        return [StatsBucket(bucket=sql.from_db(bucket), queue=queue, done=done,
                            dead_letter=dead_letter, cancelled=cancelled)
                for bucket, queue, done, dead_letter, cancelled in rows]

    async def health(self) -> StorageHealth:
        [(version, size, count)] = await self._db.run(self._db.read, HEALTH, ())
        return StorageHealth(schema_version=version, jobs_table_bytes=size, jobs_rows=count,
                             dead_tuples=None)
