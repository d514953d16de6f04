"""Store protocols of the optional features: the small persistence surface each feature needs,
implemented per backend next to that backend's SQL (DESIGN.md §2).

A backend offers each store as an attribute that :class:`~soniq.backends.base.StorageBackend`
declares (``backend.dead_letters``), None where it lacks the feature; features reach it through
the protocol only, so they never see a driver. The rules of :mod:`soniq.backends.base` hold here too:
timestamps are aware UTC datetimes, malformed ids are "not found", every state change is guarded
by the row's current status, and losing that race is "not applied", never an error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from soniq.backends.control import AuditStore, QueueField, QueueSetting, QueueStore, QueueValue
from soniq.backends.webhooks import (
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookMessage,
    WebhookStore,
    fan_out,
    webhook_payload,
)
from soniq.backends.workflows import StoredStep, StoredWorkflow, WorkflowStore

if TYPE_CHECKING:
    import builtins
    from collections.abc import Collection, Mapping, Sequence

    from soniq.types import JobRecord, NewJob, QueueStats

__all__ = [
    "FIRE_RETENTION", "DeadLetterStore", "ScheduleDefinition", "ScheduleRecord", "ScheduleStore",
    "WebhookDelivery", "WebhookEndpoint", "WebhookEvent", "WebhookMessage", "WebhookStore",
    "fan_out",
    "webhook_payload",
    "JobLogRecord", "LogStore",
    "DashboardStore", "JobSearch", "QueueCounts", "StatsBucket", "StorageHealth",
    "DefinitionStore", "JobDefinition", "StoredDefinition",
    "AuditStore", "QueueField", "QueueSetting", "QueueStore", "QueueValue",
    "StoredStep", "StoredWorkflow", "WorkflowStore",
]

#: Fire rows older than this (counted back from the schedule's newest fire) are deleted when it
#: fires again; the compare-and-swap on ``next_run_at`` already refuses anything that old.
FIRE_RETENTION = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class JobLogRecord:
    """One log record emitted inside a job. ``message`` is formatted (``record.getMessage()``),
    ``exception`` the formatted traceback when the record carried one; ``id`` is assigned by the
    store (insertion order) and is None before it is written."""

    job_id: str
    job_name: str
    queue: str
    attempt: int
    level: str
    levelno: int
    logger: str
    message: str
    exception: str | None
    created_at: datetime
    id: int | None = None


@runtime_checkable
class LogStore(Protocol):
    """Job logs (``soniq_job_logs``). A job's logs go away with the job (delete, prune,
    dead-letter delete/purge); records of a job that no longer exists are dropped when written."""

    async def insert_logs(self, records: Sequence[JobLogRecord]) -> int:
        """Write a batch; how many rows were written."""
        ...

    async def for_job(self, job_id: str) -> builtins.list[JobLogRecord]:
        """The job's records, oldest first."""
        ...

    async def search(self, query: str | None, *, job_id: str | None, min_levelno: int | None,
                     since: datetime | None, limit: int) -> builtins.list[JobLogRecord]:
        """Records whose message contains ``query`` (case-insensitive; None or "" matches all),
        with ``levelno >= min_levelno`` and ``created_at >= since``, newest first."""
        ...


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
class ScheduleRecord(ScheduleDefinition):
    """A stored schedule: its definition (the inherited fields) plus its state."""

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

    async def due(self, now: datetime, *, limit: int,
                  job_names: Collection[str] | None) -> builtins.list[ScheduleRecord]:
        """Schedules not paused with ``next_run_at <= now``, earliest first; only those whose
        ``job_name`` is in ``job_names`` unless it is None (the caller can enqueue any name), so
        schedules of jobs the caller cannot enqueue never crowd the ``limit``."""
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


@dataclass(frozen=True, slots=True)
class StatsBucket:
    """Jobs of one queue that finished within one minute (``bucket`` is the minute's start)."""

    bucket: datetime
    queue: str
    done: int
    dead_letter: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class StorageHealth:
    """What the dashboard's health page shows about the storage. ``schema_version`` is the
    newest migration applied (None where there are no migrations); sizes are None when the
    backend cannot tell."""

    schema_version: int | None
    jobs_table_bytes: int | None
    jobs_rows: int | None
    dead_tuples: int | None


@dataclass(frozen=True, slots=True)
class JobSearch:
    """One page of a bounded job search. ``scanned_to`` is set when the search stopped at its
    scan limit before the page filled: the id of the oldest job examined (older matches may
    exist; search on with ``before=scanned_to``)."""

    jobs: builtins.list[JobRecord]
    scanned_to: str | None = None


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Per-queue counts for the dashboard. When ``estimated``, ``queued``, ``processing`` and
    ``dead_letter`` are still exact but ``done``, ``cancelled`` (and so ``total``) are estimated
    from a sample of the table."""

    queues: builtins.list[QueueStats]
    estimated: bool = False


@runtime_checkable
class DashboardStore(Protocol):
    """The reads the dashboard needs beyond :class:`~soniq.backends.base.StorageBackend`, and the
    per-minute rollups its charts read (``soniq_stats_minute``), so no request counts the jobs
    table over time.

    :meth:`rollup` recomputes the minutes from ``since`` and keeps, per minute and queue, the
    larger of the stored and the recomputed counts: counts of a past minute only grow until its
    rows are pruned or replayed, so running it again (or from several processes) never double
    counts, and pruning after a rollup loses nothing.
    """

    async def search_jobs(self, *, queue: str | None, status: str | None, job_name: str | None,
                          since: datetime | None, until: datetime | None, before: str | None,
                          limit: int, scan_limit: int) -> JobSearch:
        """Jobs newest first (by id) with exact ``queue``/``status``, ``job_name`` containing the
        text (case-insensitive), ``since <= created_at < until``, and ``id < before`` (the
        cursor: the last id of the previous page). Only the newest ``scan_limit`` jobs before
        ``before`` are examined (a bounded read whatever the filters); see
        :attr:`JobSearch.scanned_to`."""
        ...

    async def queue_counts(self, *, exact_up_to: int) -> QueueCounts:
        """Counts per queue (sorted like ``queue_stats``): exact while the jobs table holds at
        most about ``exact_up_to`` rows, estimated above (see :class:`QueueCounts`)."""
        ...

    async def rollup(self, *, since: datetime, keep_after: datetime) -> None:
        """Recount finished jobs (done, dead_letter, cancelled) per minute of ``finished_at``
        from ``since``; delete buckets older than ``keep_after``."""
        ...

    async def stats(self, *, since: datetime) -> builtins.list[StatsBucket]:
        """Stored buckets from ``since``, oldest first."""
        ...

    async def health(self) -> StorageHealth: ...


@dataclass(frozen=True, slots=True)
class JobDefinition:
    """What a worker registered for a job name, with the app's defaults filled in (``timeout``
    None: no timeout). ``options`` holds what later rules need (limits, uniqueness), JSON-able."""

    name: str
    queue: str
    priority: int
    max_attempts: int
    timeout: float | None
    encrypt: bool
    options: Mapping[str, Any]

    @property
    def digest(self) -> str:
        """Identifies this definition of the name: equal for equal definitions."""
        body = [self.queue, self.priority, self.max_attempts, self.timeout, self.encrypt,
                self.options]
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    """One stored version of a name's definition: ``first_seen_at`` is when any worker first
    wrote it (never moved), ``last_seen_at`` the latest worker start that wrote it."""

    definition: JobDefinition
    digest: str
    first_seen_at: datetime
    last_seen_at: datetime


@runtime_checkable
class DefinitionStore(Protocol):
    """Job definitions written by workers (``soniq_job_definitions``): one row per name and
    digest, so every version seen stays, and which one is current is decided by the reader."""

    async def upsert(self, definitions: Sequence[JobDefinition], *,
                     now: datetime | None = None) -> None:
        """Insert each definition not yet stored (``first_seen_at = last_seen_at = now``); of one
        already stored only ``last_seen_at`` moves (forward). ``now=None``: the store's clock."""
        ...

    async def list(self, name: str | None = None) -> builtins.list[StoredDefinition]:
        """Every stored version (of ``name`` only, unless None), by name then ``first_seen_at``.
        A row that is not a definition (written by hand) is skipped with a warning naming it."""
        ...

    async def waiting(self, limit: int) -> builtins.list[str]:
        """The job names of the first ``limit`` claimable queued jobs in claim order (due or
        not; parked and rate-held ones aside), each once, sorted: what ``coverage`` flags
        at once when no live worker knows it, even with no definition stored."""
        ...
