"""Store protocols of the optional features: the small persistence surface each feature needs,
implemented per backend next to that backend's SQL (DESIGN.md §2).

A backend offers a store as a property (``backend.dead_letters``); features reach it through the
protocol only, so they never see a driver. The rules of :mod:`soniq.backends.base` hold here too:
timestamps are aware UTC datetimes, malformed ids are "not found", every state change is guarded
by the row's current status, and losing that race is "not applied", never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import builtins
    from datetime import datetime

    from soniq.types import JobRecord, NewJob

__all__ = ["FIRE_RETENTION", "DeadLetterStore", "ScheduleDefinition", "ScheduleRecord", "ScheduleStore"]

#: Fire rows older than this (counted back from the schedule's newest fire) are deleted when it
#: fires again; the compare-and-swap on ``next_run_at`` already refuses anything that old.
FIRE_RETENTION = timedelta(days=1)


@runtime_checkable
class DeadLetterStore(Protocol):
    """Jobs in status ``dead_letter``: they stay in the one jobs table, keeping their id and
    their ``errors`` (one entry per failed attempt).

    Filters are exact matches (``queue``, ``job_name``) and ``finished_at >= since``; arguments
    arrive validated. Listing order is newest dead-lettered first: ``finished_at DESC, id DESC``.
    """

    async def list_dead(self, *, queue: str | None, job_name: str | None,
                        since: datetime | None, limit: int, offset: int) -> list[JobRecord]:
        """Dead-lettered jobs matching the filters, newest first."""
        ...

    async def get_dead(self, job_id: str) -> JobRecord | None:
        """The job when it exists and is dead-lettered, else None."""
        ...

    async def count_dead(self, *, queue: str | None, job_name: str | None) -> int:
        """How many dead-lettered jobs match."""
        ...

    async def replay(self, job_id: str) -> str | None:
        """``dead_letter`` -> ``queued`` (same id, attempts 0, due now, finish and expiry
        cleared, errors kept) and wake listeners on its queue. The job's queue, or None when it
        was not dead-lettered."""
        ...

    async def replay_matching(self, *, queue: str | None, job_name: str | None,
                              since: datetime | None, limit: int | None) -> list[tuple[str, str]]:
        """Replay up to ``limit`` (all when None) matching jobs, newest first, waking each queue
        once. ``(id, queue)`` of each job replayed."""
        ...

    async def delete_dead(self, job_id: str) -> bool:
        """Remove the job if it is dead-lettered; True when removed."""
        ...

    async def purge(self, *, finished_before: datetime | None) -> int:
        """Remove dead-lettered jobs finished before the cutoff (all when None); how many."""
        ...


@dataclass(frozen=True, slots=True)
class ScheduleDefinition:
    """What a schedule is, as the scheduler validated it. Exactly one of ``cron`` /
    ``every_seconds`` is set; ``queue``/``priority`` None mean the job's defaults; ``args`` is
    JSON text."""

    name: str
    job_name: str
    cron: str | None
    every_seconds: float | None
    timezone: str
    queue: str | None
    priority: int | None
    args: str


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A stored schedule: its definition plus its state."""

    name: str
    job_name: str
    cron: str | None
    every_seconds: float | None
    timezone: str
    queue: str | None
    priority: int | None
    args: str
    paused: bool
    next_run_at: datetime
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime


@runtime_checkable
class ScheduleStore(Protocol):
    """Recurring-job schedules (``soniq_schedules``) and the fire times that enqueued a job
    (``soniq_schedule_fires``, unique per schedule and fire time).

    :meth:`fire` is the one operation that must be atomic: fire row, job and the schedule's
    advance commit together or not at all, so any number of workers enqueue each fire time once.
    """

    async def upsert(self, definition: ScheduleDefinition, *, next_run_at: datetime,
                     now: datetime) -> ScheduleRecord:
        """Insert, or replace the definition of the schedule with this name. ``paused`` and
        ``last_run_at`` are kept; ``next_run_at`` is kept too when the timing (cron,
        every_seconds, timezone) is unchanged, else set to the given value."""
        ...

    async def get(self, name: str) -> ScheduleRecord | None:
        ...

    async def list(self) -> builtins.list[ScheduleRecord]:
        """Every schedule, by name."""
        ...

    async def delete(self, name: str) -> bool:
        """Remove the schedule and its fire rows; True when it existed."""
        ...

    async def set_paused(self, name: str, paused: bool, *, now: datetime) -> bool:
        """True when the schedule exists (whatever its previous state)."""
        ...

    async def due(self, now: datetime, *, limit: int) -> builtins.list[ScheduleRecord]:
        """Schedules not paused with ``next_run_at <= now``, earliest first."""
        ...

    async def advance(self, name: str, *, expected: datetime, next_run_at: datetime,
                      now: datetime) -> bool:
        """Move ``next_run_at`` from ``expected`` to the given value without firing (missed
        times skipped); False when it no longer was ``expected`` (someone else moved it)."""
        ...

    async def fire(self, name: str, *, fire_at: datetime, job: NewJob, expected: datetime,
                   next_run_at: datetime, now: datetime) -> str | None:
        """In one transaction: move the schedule (not paused, ``next_run_at == expected``) to
        ``next_run_at`` with ``last_run_at = fire_at``; insert the ``(name, fire_at)`` fire row;
        insert ``job``. The job id, or None (nothing written) when the schedule is gone, paused,
        already advanced, or this fire time was already fired."""
        ...
