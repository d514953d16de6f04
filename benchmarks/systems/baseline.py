"""The ceiling for enqueue: bare asyncpg on one connection, writing Soniq's row shape into
Soniq's own table (same schema, same indexes), one autocommitted statement per call.

- one job per call: ``INSERT ... VALUES (...)`` (the commit is implicit);
- many jobs per call: one binary ``COPY`` per chunk (``copy_records_to_table``), the fastest
  way asyncpg writes rows.

No NOTIFY, no validation, no JSON encoding beyond a fixed string: what Soniq would cost if it
did nothing but the write. With Soniq's indexes in place, the bulk ceiling is PostgreSQL's own
index maintenance (docs/guides/performance.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from benchmarks.systems.soniq_system import SYSTEM as SONIQ
from soniq.backends.postgres.sql import COPY_COLUMNS
from soniq.ids import new_id, new_ids

if TYPE_CHECKING:
    from benchmarks.databases import ProbeSql, Target

__all__ = ["SYSTEM"]

_INSERT_ONE = """
INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, max_attempts, scheduled_at)
VALUES ($1::uuid, $2::text, 'default', 100, 'queued', $3::jsonb, 4, now())
"""


class _Producer:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def enqueue_one(self, i: int, job: str = "noop") -> None:
        await self._conn.execute(_INSERT_ONE, new_id(), job, f'{{"i": {i}}}')

    async def enqueue_bulk(self, first: int, count: int) -> None:
        records = [(job_id, "noop", "default", 100, "queued", f'{{"i": {i}}}', 4)
                   for i, job_id in enumerate(new_ids(count), start=first)]
        await self._conn.copy_records_to_table("soniq_jobs", records=records,
                                               columns=COPY_COLUMNS)

    async def aclose(self) -> None:
        await self._conn.close()


class BaselineSystem:
    name = "asyncpg"

    def version(self) -> str:
        return str(asyncpg.__version__)

    def probe_sql(self, target: Target) -> ProbeSql:
        return SONIQ.probe_sql(target)  # type: ignore[no-any-return]

    async def install(self, target: Target) -> None:
        await SONIQ.install(target)

    async def open_producer(self, target: Target) -> _Producer:
        return _Producer(await asyncpg.connect(target.url))

    async def open_worker(self, target: Target, concurrency: int,
                          stamps: dict[int, float]) -> Any:
        raise NotImplementedError("the asyncpg baseline only enqueues")


SYSTEM: Any = BaselineSystem()
