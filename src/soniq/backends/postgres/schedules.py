"""The schedule store on PostgreSQL (:class:`~soniq.backends.stores.ScheduleStore`): its SQL and
the calls that run it.

:func:`_fire` is one transaction: the compare-and-swap ``UPDATE`` on the schedule row (which also
locks it, so concurrent workers queue behind each other instead of racing), the fire row with
``ON CONFLICT DO NOTHING`` on ``UNIQUE (schedule_name, fire_at)``, and the job insert (whose NOTIFY
is delivered at commit). Losing either guard rolls everything back. Every driver call goes through
:func:`soniq.backends._bridge.call` and driver errors through the backend's translator.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.stores import FIRE_RETENTION, ScheduleRecord

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Collection, Mapping
    from datetime import datetime

    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.sql import Sql
    from soniq.backends.stores import ScheduleDefinition
    from soniq.types import NewJob

__all__ = ["PostgresScheduleStore"]

_COLUMNS = ("name, job_name, cron, every_seconds, timezone, queue, priority, args::text AS args, "
            "paused, next_run_at, last_run_at, created_at, updated_at")


class _Sql:
    """This store's statements for one schema (:func:`_sql`)."""

    def __init__(self, q: Sql) -> None:
        n = q.names
        #: The job insert of a fire (the backend's own enqueue statement).
        self.insert_job = q.insert_job
        self.select = f"SELECT {_COLUMNS} FROM {n.schedules}"

        #: $1..$8 definition, $9 next_run_at, $10 now. The timing unchanged keeps next_run_at.
        self.upsert = f"""
INSERT INTO {n.schedules} AS s (name, job_name, cron, every_seconds, timezone, queue, priority,
                                  args, paused, next_run_at, created_at, updated_at)
VALUES ($1::text, $2::text, $3::text, $4::double precision, $5::text, $6::text, $7::smallint,
        $8::jsonb, false, $9::timestamptz, $10::timestamptz, $10::timestamptz)
ON CONFLICT (name) DO UPDATE SET
    job_name = EXCLUDED.job_name, cron = EXCLUDED.cron, every_seconds = EXCLUDED.every_seconds,
    timezone = EXCLUDED.timezone, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
    args = EXCLUDED.args, updated_at = EXCLUDED.updated_at,
    next_run_at = CASE WHEN s.cron IS NOT DISTINCT FROM EXCLUDED.cron
                         AND s.every_seconds IS NOT DISTINCT FROM EXCLUDED.every_seconds
                         AND s.timezone = EXCLUDED.timezone
                       THEN s.next_run_at ELSE EXCLUDED.next_run_at END
RETURNING {_COLUMNS}
"""

        #: $1 next_run_at, $2 last_run_at (NULL keeps it), $3 now, $4 name, $5 expected
        #: next_run_at.
        self.move = f"""
UPDATE {n.schedules} SET next_run_at = $1::timestamptz,
       last_run_at = COALESCE($2::timestamptz, last_run_at), updated_at = $3::timestamptz
WHERE name = $4::text AND next_run_at = $5::timestamptz AND NOT paused
RETURNING name
"""

        self.insert_fire = f"""
INSERT INTO {n.schedule_fires} (schedule_name, fire_at, job_id, fired_at)
VALUES ($1::text, $2::timestamptz, $3::uuid, $4::timestamptz)
ON CONFLICT (schedule_name, fire_at) DO NOTHING
RETURNING job_id
"""

        self.prune_fires = (f"DELETE FROM {n.schedule_fires} "
                            "WHERE schedule_name = $1::text AND fire_at < $2::timestamptz")

        self.delete = f"""
WITH fires AS (DELETE FROM {n.schedule_fires} WHERE schedule_name = $1::text)
DELETE FROM {n.schedules} WHERE name = $1::text RETURNING name
"""

        self.set_paused = (
            f"UPDATE {n.schedules} SET paused = $2::boolean, updated_at = $3::timestamptz "
            "WHERE name = $1::text RETURNING name"
        )

        #: $1 now, $2 limit, $3 the job names to consider (NULL: every job).
        self.due = (f"{self.select} WHERE NOT paused AND next_run_at <= $1::timestamptz "
                    "AND ($3::text[] IS NULL OR job_name = ANY ($3::text[])) "
                    "ORDER BY next_run_at, name LIMIT $2::integer")


_sql = functools.cache(_Sql)


def _record(row: Mapping[str, Any]) -> ScheduleRecord:
    every = row["every_seconds"]
    return ScheduleRecord(
        name=row["name"], job_name=row["job_name"], cron=row["cron"],
        every_seconds=None if every is None else float(every), timezone=row["timezone"],
        queue=row["queue"], priority=row["priority"], args=row["args"], paused=row["paused"],
        next_run_at=row["next_run_at"], last_run_at=row["last_run_at"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


class PostgresScheduleStore:
    """Schedules in PostgreSQL (reached as ``PostgresBackend.schedules``).

    ``ready`` returns the backend's pool (opening it on first use); ``errors`` is the backend's
    driver-error translator; ``q`` is the backend's statements (its schema, its job insert).
    """

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator, q: Sql) -> None:
        self._ready = ready
        self._errors = errors
        self._sql = _sql(q)

    async def upsert(self, definition: ScheduleDefinition, *, next_run_at: datetime,
                     now: datetime) -> ScheduleRecord:
        d = definition
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, self._sql.upsert, d.name, d.job_name, d.cron,
                             d.every_seconds, d.timezone, d.queue, d.priority, d.args,
                             next_run_at, now)
        return _record(row)

    async def get(self, name: str) -> ScheduleRecord | None:
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, f"{self._sql.select} WHERE name = $1::text", name)
        return None if row is None else _record(row)

    async def list(self) -> builtins.list[ScheduleRecord]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, f"{self._sql.select} ORDER BY name")
        return [_record(row) for row in rows]

    async def delete(self, name: str) -> bool:
        with self._errors:
            pool = await self._ready()
            return await call(pool.fetchval, self._sql.delete, name) is not None

    async def set_paused(self, name: str, paused: bool, *, now: datetime) -> bool:
        with self._errors:
            pool = await self._ready()
            return await call(pool.fetchval, self._sql.set_paused, name, paused, now) is not None

    async def due(self, now: datetime, *, limit: int,
                  job_names: Collection[str] | None) -> builtins.list[ScheduleRecord]:
        names = None if job_names is None else sorted(job_names)
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.due, now, limit, names)
        return [_record(row) for row in rows]

    async def advance(self, name: str, *, expected: datetime, next_run_at: datetime,
                      now: datetime) -> bool:
        with self._errors:
            pool = await self._ready()
            moved = await call(pool.fetchval, self._sql.move, next_run_at, None, now, name,
                               expected)
        return moved is not None

    async def fire(self, name: str, *, fire_at: datetime, job: NewJob, expected: datetime,
                   next_run_at: datetime, now: datetime) -> str | None:
        with self._errors:
            pool = await self._ready()
            return await call(_fire, pool, self._sql, name, fire_at, job, expected, next_run_at,
                              now)


class _AlreadyFired(Exception):
    """Rolls the fire transaction back: another worker fired this time first."""


async def _fire(pool: Any, q: _Sql, name: str, fire_at: datetime, job: NewJob, expected: datetime,
                next_run_at: datetime, now: datetime) -> str | None:
    """Runs on the driver's loop: the fire as one transaction."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(q.move, next_run_at, fire_at, now, name, expected) is None:
                raise _AlreadyFired
            if await conn.fetchval(q.insert_fire, name, fire_at, job.id, now) is None:
                raise _AlreadyFired
            await conn.fetchval(q.insert_job, job.id, job.job_name, job.queue, job.priority,
                                job.args, job.max_attempts, job.scheduled_at)
            await conn.execute(q.prune_fires, name, fire_at - FIRE_RETENTION)
    except _AlreadyFired:
        return None
    return job.id
