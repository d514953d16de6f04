"""The shapes that cross Soniq's layers: job states, the public job record, queue statistics, and
the rows the storage seam reads and writes (workflows' in :mod:`soniq.types.workflows`,
uniqueness's in :mod:`soniq.types.unique`)."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias, TypedDict, overload

# A running job's context, and the shapes of uniqueness and workflows, live in their own
# modules; soniq.types names them too.
from soniq.types.context import JobContext, JobReporter, RateLimited, Snooze
from soniq.types.unique import OnConflict, Uniqueness
from soniq.types.workflows import BATCH_ITEM, WorkflowInfo, WorkflowStatus, WorkflowStep

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "FINAL_STATUSES",
    "AuditEntry",
    "CancelOutcome",
    "ClaimedJob",
    "DatabaseInfo",
    "JobContext",
    "JobCoverage",
    "JobOutcome",
    "JobRecord",
    "JobReporter",
    "JobState",
    "JobStatus",
    "JobStream",
    "ListenUrlInfo",
    "NewJob",
    "QueueInfo",
    "QueueStats",
    "DependencyResult",
    "EnqueueOptions",
    "OnConflict",
    "RateLimited",
    "Uniqueness",
    "Snooze",
    "WorkerInfo",
    "BATCH_ITEM",
    "WorkflowInfo",
    "WorkflowStatus",
    "WorkflowStep",
]


class JobStatus(enum.StrEnum):
    """Where a job is in its life. One jobs table holds every state."""

    #: Enqueued with dependencies that have not all finished (see ``EnqueueOptions``): not
    #: claimable until they are ``done`` (or a failure policy lets it run).
    WAITING = "waiting"
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.DEAD_LETTER, JobStatus.CANCELLED})

#: What a cancel did: ``cancelled`` (the job was waiting and is now cancelled) or ``requested``
#: (it is running; its worker cancels it unless the job finishes first).
CancelOutcome: TypeAlias = Literal["cancelled", "requested"]


class JobRecord(TypedDict):
    """A job as ``get_job`` / ``list_jobs`` return it; the same keys and types on every backend.

    Timestamps are timezone-aware UTC datetimes; ``args`` and ``result`` are decoded JSON.
    ``errors`` lists one entry per failed attempt (``attempt``, ``type``, ``message``,
    ``traceback``, ``at``); ``last_error`` is the newest entry's ``"Type: message"``.
    """

    id: str
    job_name: str
    queue: str
    priority: int
    status: str
    args: dict[str, Any]
    result: Any
    attempts: int
    max_attempts: int
    scheduled_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    errors: list[dict[str, Any]]
    last_error: str | None
    worker_id: str | None
    dedup_key: str | None
    #: The workflow or batch the job is a step of (``app.workflows.get``), and its step name.
    workflow_id: str | None
    step_name: str | None
    #: The latest value the job reported with ``ctx.progress`` (None: none yet).
    progress: Any


class DatabaseInfo(TypedDict):
    """What ``app.database_info()`` found out about the database (``soniq doctor``,
    ``soniq migrate-status``). Read without the schema check, so it works before ``soniq setup``.

    ``clock_skew`` is database clock minus this process's clock, in seconds (corrected for half
    the round trip). ``transaction_pooling`` is True when server sessions are shared: two
    statements on one client connection ran in different sessions, or two client connections in
    the same one (PgBouncer transaction/statement pooling). ``listen_works`` is True when a NOTIFY
    sent on one connection reached a LISTEN on another. ``via_proxy`` is True when the session's
    cancel key names another process than the one answering, or the server's own port differs
    from the URL's (a pooler or proxy). ``listen_url`` describes the ``listen_url`` setting's
    connection when one is set (PostgreSQL).
    None means "does not apply to this backend".
    """

    backend: str
    server_version: str | None
    applied_migrations: list[str]
    pending_migrations: list[str]
    round_trip: float | None
    clock_skew: float | None
    transaction_pooling: bool | None
    listen_works: bool | None
    max_connections: int | None
    via_proxy: bool | None
    listen_url: ListenUrlInfo | None


class ListenUrlInfo(TypedDict):
    """The ``listen_url`` connection as ``soniq doctor`` found it: ``error`` when it could not
    connect; else whether it is reached through transaction pooling, and whether a NOTIFY sent
    over ``database_url`` reached a LISTEN there (None: not tried, as it is pooled)."""

    error: str | None
    transaction_pooling: bool | None
    listen_works: bool | None


class QueueStats(TypedDict):
    """One queue's job counts, as ``get_queue_stats()`` returns them (a list sorted by queue)."""

    queue: str
    total: int
    waiting: int
    queued: int
    processing: int
    done: int
    dead_letter: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """One queue as ``app.queues.list()`` returns it: its stored settings (defaults when none are
    stored) and its job counts by status (as :class:`QueueStats`; zero for a queue with a stored
    setting but no jobs). ``rate_limit`` is ``"N/s"``, ``"N/m"`` or ``"N/h"``."""

    name: str
    paused: bool
    concurrency_limit: int | None
    rate_limit: str | None
    total: int = 0
    waiting: int = 0
    queued: int = 0
    processing: int = 0
    done: int = 0
    dead_letter: int = 0
    cancelled: int = 0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded change (or attempted change): who (``actor``: ``api``, ``cli:user@host``,
    the dashboard's ``api-key``/``loopback``), from where (``client``: an address, or None),
    what (``action`` such as ``queue.pause``), on which ``targets``, and the ``outcome``:
    ``ok``, ``not_applied``, ``denied`` or ``error``."""

    at: datetime
    actor: str
    client: str | None
    action: str
    targets: tuple[str, ...]
    outcome: str
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "actor": self.actor, "client": self.client, "action": self.action,
                "targets": list(self.targets), "outcome": self.outcome, "detail": self.detail}


class JobCoverage(TypedDict):
    """One job name as ``app.definitions.coverage()`` returns it (a list sorted by name):
    ``queue`` of its current stored definition (None when none is stored), how many live workers
    registered it, and ``flagged`` when no live worker did (its jobs wait)."""

    name: str
    queue: str | None
    live_workers: int
    flagged: bool


class NewJob(NamedTuple):
    """A row to insert. ``args`` is already-encoded JSON text (encoded once, at enqueue). A named
    tuple, not a frozen dataclass: bulk enqueue builds one per job, at a third of the cost.

    ``dedup_key`` is set for a unique job (derived from its name and arguments, or the ``unique_by``
    ones) or an explicit ``dedup_key``; ``unique`` says when a job standing on the key blocks this
    one and what then happens (soniq/backends/keys.py): the insert returns the standing id.

    ``concurrency_key`` is set for a job with a concurrency limit (``concurrency_limit``, the
    limit the producer knows): the key argument's value as canonical JSON, or ``''`` for a limit
    on the job name alone. The insert takes one of the key's slots, or parks the job until a
    slot is handed over (see ARCHITECTURE.md, "Concurrency limits").
    """

    id: str
    job_name: str
    queue: str
    priority: int
    args: str
    max_attempts: int
    scheduled_at: datetime | None = None
    dedup_key: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    #: A rate-limited job's key (its ``rate_key`` argument's value as canonical JSON, ``''``
    #: for a rate on the job name alone): it starts only with a token of that bucket.
    rate_key: str | None = None
    #: With a dedup key: how it meets the job standing on its key (None: ``Uniqueness()``).
    unique: Uniqueness | None = None
    #: The ids of the jobs it waits for (stored ones, or jobs of the same insert): it is stored
    #: ``waiting`` until they are ``done`` (see ``EnqueueOptions``).
    depends_on: tuple[str, ...] = ()
    #: ``"cancel"``, ``"run"`` or ``"wait"`` when a dependency fails (with ``depends_on``).
    on_dependency_failure: str | None = None
    #: The workflow or batch it is a step of, and its step name there.
    workflow_id: str | None = None
    step_name: str | None = None


class JobStream(Sequence[NewJob]):
    """The jobs of one ``enqueue_many`` call, built (validated and encoded) as they are read, so
    a backend can send the first while the rest are still being built. Every job has the same
    name (``job_name``), queue (``queue``), priority, attempts and time (``scheduled_at``);
    dedup keys only when ``keyed``. Reading it twice builds nothing twice; a job that fails validation raises where it is read, and the backend must then write
    nothing (PostgreSQL: it aborts the one COPY statement)."""

    def __init__(self, count: int, rows: Iterator[NewJob], *, job_name: str, queue: str,
                 scheduled_at: datetime | None, limited: bool = False,
                 keyed: bool = False) -> None:
        self._count = count
        self._rows = rows
        self._built: list[NewJob] = []
        self._failed: Exception | None = None
        self.job_name = job_name
        self.queue = queue
        self.scheduled_at = scheduled_at
        #: Its jobs carry a concurrency key or a rate key (they take slots or tokens).
        self.limited = limited
        #: Its jobs carry dedup keys (they are resolved against stored keys, never streamed).
        self.keyed = keyed

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[NewJob]:
        yield from self._built
        if self._failed is not None:  # the element that failed fails every later read too
            raise self._failed
        try:
            for row in self._rows:
                self._built.append(row)
                yield row
        except Exception as exc:
            self._failed = exc
            raise

    @overload
    def __getitem__(self, index: int) -> NewJob: ...
    @overload
    def __getitem__(self, index: slice) -> list[NewJob]: ...
    def __getitem__(self, index: int | slice) -> NewJob | list[NewJob]:
        if len(self._built) < self._count:
            for _ in self:  # build the rest
                pass
        return self._built[index]


class ClaimedJob(NamedTuple):
    """A job a worker claimed: ``attempts`` already counts this attempt; every later write about
    it is fenced by ``lease_id``. ``args`` is the stored JSON text."""

    id: str
    job_name: str
    queue: str
    priority: int
    args: str
    attempts: int
    max_attempts: int
    scheduled_at: datetime
    created_at: datetime
    lease_id: str
    #: The job's stored concurrency key (None: not limited when it was enqueued).
    concurrency_key: str | None = None
    #: It was enqueued with dependencies (``ctx.dependency_results`` is read at its start).
    has_dependencies: bool = False
    #: The workflow or batch it is a step of (None: it is not a step).
    workflow_id: str | None = None
    #: The state an earlier attempt saved with ``ctx.checkpoint`` (stored text, encoded like a
    #: result; None: never checkpointed).
    checkpoint: str | None = None


class JobState(NamedTuple):
    """What a running attempt reports about itself, written only while its lease holds (one
    ``job_states.save`` for many jobs). ``progress`` is JSON text, ``checkpoint`` stored text
    encoded like a result; None leaves the stored value as it is."""

    job_id: str
    lease_id: str
    progress: str | None = None
    checkpoint: str | None = None


class JobOutcome(NamedTuple):
    """How one claimed attempt ended, written by ``complete_jobs`` only while the lease still holds.

    - ``DONE``: ``result`` (JSON text or None) is stored; the row may be pruned after ``expires_at``.
    - ``QUEUED``: back in the queue at ``run_at`` (retry, snooze or shutdown); ``refund_attempt``
      gives the attempt back (snooze, shutdown).
    - ``DEAD_LETTER`` / ``CANCELLED``: final.
    ``error`` (JSON text of one ``errors`` entry) is appended to the job's ``errors`` when given.
    ``job`` is never written: the worker sets it on ``DONE`` to the attempt's claimed job, so that
    a result the database refuses can still become a failed attempt of that job.
    """

    job_id: str
    lease_id: str
    status: JobStatus
    result: str | None = None
    error: str | None = None
    run_at: datetime | None = None
    refund_attempt: bool = False
    expires_at: datetime | None = None
    job: ClaimedJob | None = None
    #: ``RateLimited``: hold the job's rate bucket (job name and stored ``rate_key``, ``''``
    #: without one) until then, for every worker (written only when the outcome is accepted).
    rate_hold: datetime | None = None
    #: Never written: on a final outcome of a workflow's step, the workflow, so the worker can
    #: report the step's end once the outcome is stored (``EventDispatcher.steps_ended``).
    workflow_id: str | None = None


#: What a failed dependency does to a job that waits for it (``EnqueueOptions``).
DependencyFailure: TypeAlias = Literal["cancel", "run", "wait"]
DEPENDENCY_FAILURES: tuple[DependencyFailure, ...] = ("cancel", "run", "wait")


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """Per-call options of ``enqueue`` (``options=EnqueueOptions(...)``; an ``options=`` of
    any other type is a job argument), and per call of ``enqueue_many``.

    ``depends_on``: ids of jobs this one waits for: it is stored ``waiting`` and runs once every
    one of them is ``done``. ``on_dependency_failure``: what happens when one ends
    ``dead_letter`` or ``cancelled``, or is deleted: ``"cancel"`` (this job is cancelled, and
    so are the jobs waiting for it under ``"cancel"``), ``"run"`` (it runs anyway) or ``"wait"``
    (it keeps waiting; a replayed dependency that succeeds lets it run)."""

    depends_on: Sequence[str] = ()
    on_dependency_failure: DependencyFailure = "cancel"
    #: Uniqueness for this call (None: the job's ``@app.job`` option); any of them set makes the
    #: call unique. ``unique_by``: the arguments that form the key; ``unique_for``: seconds a new
    #: job is refused after the last one took the key; ``unique_while``: the standing job's
    #: statuses that block (``"queued"``, ``"processing"``); ``on_conflict``: ``"keep"`` or
    #: ``"replace"`` (needs ``unique_by`` or a ``dedup_key``); ``max_delay``: with
    #: ``"replace"``, seconds after the first enqueue past which replaces do not push the job.
    #: See docs/tutorial/uniqueness.md.
    unique_by: Sequence[str] | None = None
    unique_for: float | None = None
    unique_while: Sequence[str] | None = None
    on_conflict: OnConflict | None = None
    max_delay: float | None = None


@dataclass(frozen=True, slots=True)
class DependencyResult:
    """A dependency of a job as stored: its ``result`` JSON-decoded (None unless ``done``;
    still encrypted for an encrypted job: the worker's codec decrypts it)."""

    id: str
    job_name: str
    step_name: str | None
    status: JobStatus
    result: Any


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A running worker, as registered in storage (``queues=None`` means every queue;
    ``job_names``: the jobs it registered)."""

    id: str
    hostname: str
    pid: int
    queues: tuple[str, ...] | None
    concurrency: int
    job_names: tuple[str, ...] = ()
