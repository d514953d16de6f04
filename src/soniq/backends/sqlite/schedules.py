"""The schedule store on SQLite (:class:`~soniq.backends.stores.ScheduleStore`): its SQL and the
calls that run it.

:meth:`SqliteScheduleStore.fire` is one ``BEGIN IMMEDIATE`` transaction: the compare-and-swap on
the schedule's ``next_run_at``, the ``(schedule_name, fire_at)`` fire row (unique) and the job
commit together, or nothing does. Every call goes through :meth:`SqliteDatabase.run`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from soniq.backends.sqlite import slots, sql
from soniq.backends.stores import FIRE_RETENTION, ScheduleRecord

if TYPE_CHECKING:
    import builtins
    from collections.abc import Collection, Sequence
    from datetime import datetime

    from soniq.backends.sqlite.database import SqliteDatabase
    from soniq.backends.stores import ScheduleDefinition
    from soniq.types import NewJob

__all__ = ["SqliteScheduleStore"]

_COLUMNS = ("name, job_name, cron, every_seconds, timezone, queue, priority, args, paused, "
            "next_run_at, last_run_at, created_at, updated_at")

SELECT = f"SELECT {_COLUMNS} FROM soniq_schedules"

#: ?1..?8 definition, ?9 next_run_at, ?10 now. The timing unchanged keeps next_run_at.
UPSERT = f"""
INSERT INTO soniq_schedules ({_COLUMNS})
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, NULL, ?10, ?10)
ON CONFLICT (name) DO UPDATE SET
    job_name = excluded.job_name, cron = excluded.cron, every_seconds = excluded.every_seconds,
    timezone = excluded.timezone, queue = excluded.queue, priority = excluded.priority,
    args = excluded.args, updated_at = excluded.updated_at,
    next_run_at = CASE WHEN soniq_schedules.cron IS excluded.cron
                         AND soniq_schedules.every_seconds IS excluded.every_seconds
                         AND soniq_schedules.timezone = excluded.timezone
                       THEN soniq_schedules.next_run_at ELSE excluded.next_run_at END
RETURNING {_COLUMNS}
"""

#: ?1 next_run_at, ?2 last_run_at (NULL keeps it), ?3 now, ?4 name, ?5 expected next_run_at.
MOVE = (
    "UPDATE soniq_schedules SET next_run_at = ?1, last_run_at = COALESCE(?2, last_run_at), "
    "updated_at = ?3 WHERE name = ?4 AND next_run_at = ?5 AND paused = 0 RETURNING name"
)

INSERT_FIRE = (
    "INSERT INTO soniq_schedule_fires (schedule_name, fire_at, job_id, fired_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (schedule_name, fire_at) DO NOTHING RETURNING job_id"
)


#: ?1 now, ?2 limit, ?3 the job names to consider as a JSON array (NULL: every job).
DUE = (f"{SELECT} WHERE paused = 0 AND next_run_at <= ?1 "
       "AND (?3 IS NULL OR job_name IN (SELECT value FROM json_each(?3))) "
       "ORDER BY next_run_at, name LIMIT ?2")


class _AlreadyFired(Exception):
    """Rolls the fire transaction back: another worker fired this time first."""


def _record(row: Sequence[Any]) -> ScheduleRecord:
    (name, job_name, cron, every, timezone, queue, priority, args, paused, next_run_at,
     last_run_at, created_at, updated_at) = row
    return ScheduleRecord(
        name=name, job_name=job_name, cron=cron,
        every_seconds=None if every is None else float(every), timezone=timezone, queue=queue,
        priority=priority, args=args, paused=bool(paused), next_run_at=sql.from_db(next_run_at),
        last_run_at=None if last_run_at is None else sql.from_db(last_run_at),
        created_at=sql.from_db(created_at), updated_at=sql.from_db(updated_at),
    )


class SqliteScheduleStore:
    """Schedules in one SQLite file (reached as ``SqliteBackend.schedules``)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def upsert(self, definition: ScheduleDefinition, *, next_run_at: datetime,
                     now: datetime) -> ScheduleRecord:
        d = definition
        [row] = await self._db.run(self._db.write, UPSERT, (
            d.name, d.job_name, d.cron, d.every_seconds, d.timezone, d.queue, d.priority, d.args,
            sql.to_db(next_run_at), sql.to_db(now)))
        return _record(row)

    async def get(self, name: str) -> ScheduleRecord | None:
        rows = await self._db.run(self._db.read, f"{SELECT} WHERE name = ?", (name,))
        return _record(rows[0]) if rows else None

    async def list(self) -> builtins.list[ScheduleRecord]:
        rows = await self._db.run(self._db.read, f"{SELECT} ORDER BY name", ())
        return [_record(row) for row in rows]

    async def delete(self, name: str) -> bool:
        return await self._db.run(self._delete, name)

    async def _delete(self, name: str) -> bool:
        async with self._db.transaction() as conn:
            await conn.execute_fetchall(
                "DELETE FROM soniq_schedule_fires WHERE schedule_name = ?", (name,))
            rows = await conn.execute_fetchall(
                "DELETE FROM soniq_schedules WHERE name = ? RETURNING name", (name,))
        return bool(list(rows))

    async def set_paused(self, name: str, paused: bool, *, now: datetime) -> bool:
        rows = await self._db.run(
            self._db.write,
            "UPDATE soniq_schedules SET paused = ?, updated_at = ? WHERE name = ? RETURNING name",
            (1 if paused else 0, sql.to_db(now), name))
        return bool(rows)

    async def due(self, now: datetime, *, limit: int,
                  job_names: Collection[str] | None) -> builtins.list[ScheduleRecord]:
        names = None if job_names is None else json.dumps(sorted(job_names))
        rows = await self._db.run(self._db.read, DUE, (sql.to_db(now), limit, names))
        return [_record(row) for row in rows]

    async def advance(self, name: str, *, expected: datetime, next_run_at: datetime,
                      now: datetime) -> bool:
        rows = await self._db.run(self._db.write, MOVE, (
            sql.to_db(next_run_at), None, sql.to_db(now), name, sql.to_db(expected)))
        return bool(rows)

    async def fire(self, name: str, *, fire_at: datetime, job: NewJob, expected: datetime,
                   next_run_at: datetime, now: datetime) -> str | None:
        return await self._db.run(self._fire, name, fire_at, job, expected, next_run_at, now)

    async def _fire(self, name: str, fire_at: datetime, job: NewJob, expected: datetime,
                    next_run_at: datetime, now: datetime) -> str | None:
        at, stamp = sql.to_db(fire_at), sql.to_db(now)
        try:
            async with self._db.transaction() as conn:
                moved = await conn.execute_fetchall(
                    MOVE, (sql.to_db(next_run_at), at, stamp, name, sql.to_db(expected)))
                if not list(moved):
                    raise _AlreadyFired
                inserted = await conn.execute_fetchall(INSERT_FIRE, (name, at, job.id, stamp))
                if not list(inserted):
                    raise _AlreadyFired
                holds = await slots.admit(conn, [job]) if job.concurrency_key is not None else {}
                await conn.execute_fetchall(sql.INSERT_JOB, sql.insert_params(
                    job, stamp, holds.get(job.id), dedup_key=None))
                await conn.execute_fetchall(
                    "DELETE FROM soniq_schedule_fires WHERE schedule_name = ? AND fire_at < ?",
                    (name, sql.to_db(fire_at - FIRE_RETENTION)))
        except _AlreadyFired:
            return None
        return job.id
