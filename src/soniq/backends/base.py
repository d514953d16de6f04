"""The storage seam: what every backend does, as one typed async method per operation.

Semantics are defined by the conformance suite in ``tests/backends/`` and hold on memory, SQLite
and PostgreSQL alike. The rules every adapter keeps:

- Job rows carry JSON *text* for ``args`` and ``result``: encoded once by the caller, decoded only
  when a :class:`~soniq.types.JobRecord` is built. No driver codecs, so a caller's own connection
  works for transactional enqueue.
- ``insert_jobs`` honours ``dedup_key`` through the keys table, decided inside its write
  (:mod:`soniq.backends.keys`, concurrent inserts too): a key that blocks answers the id of the
  job standing on it (a ``replace`` updating that job when it has not started); jobs of one call
  are resolved in order.
- ``claim_jobs`` takes due ``queued`` jobs that are not parked (``hold``) in ``priority,
  scheduled_at, id`` order, marks them ``processing`` with a fresh ``lease_id`` and
  ``attempts + 1``.
- Concurrency limits: a job inserted with a ``concurrency_key`` takes one of its key's slots or
  is parked; a slot is handed to the key's oldest parked job when its holder leaves queued /
  processing for good (finished, cancelled, deleted; only outcomes whose lease held), else
  freed. A retry, snooze or give-back keeps the slot; ``reconcile_slots`` is the safety net.
- Every later write about a claimed job is fenced by ``status = 'processing' AND lease_id``;
  losing that race is a normal "not applied", never an error.
- Timestamps cross the seam as timezone-aware UTC datetimes. ``now=None`` means the database's
  clock (Python's on memory); tests pass ``now`` to move time without sleeping.
- Malformed job ids are "not found" (None / False), never a driver error.
- Driver exceptions are translated to :mod:`soniq.errors` in one place per adapter.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, cast, runtime_checkable

from soniq.errors import UnsupportedOperationError
from soniq.migrations import pending_migrations
from soniq.serialization import loads
from soniq.types import JobStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager
    from datetime import datetime

    from anyio.abc import TaskStatus

    from soniq.backends.awaiting import AwaitStore
    from soniq.backends.steps import StepStore
    from soniq.backends.stores import (
        AuditStore,
        DashboardStore,
        DeadLetterStore,
        DefinitionStore,
        LogStore,
        QueueStore,
        ScheduleStore,
        WebhookStore,
        WorkflowStore,
    )
    from soniq.limits import RateGate
    from soniq.types import (
        CancelOutcome,
        ClaimedJob,
        DatabaseInfo,
        DependencyResult,
        JobOutcome,
        JobRecord,
        JobState,
        NewJob,
        QueueStats,
        WorkerInfo,
    )

__all__ = [
    "JOB_COLUMNS",
    "JobStateStore",
    "STATUSES",
    "StorageBackend",
    "database_info",
    "job_record",
    "queue_stats_row",
    "no_connections",
    "refuse_connection",
    "unknown_job_error",
    "worker_lost_error",
]


@runtime_checkable
class JobStateStore(Protocol):
    """Running jobs' progress and checkpoints (``backend.job_states``; every backend has it)."""

    async def save(self, states: Sequence[JobState]) -> list[str]:
        """Write each state onto its job while it is ``processing`` under that ``lease_id``
        (None fields keep the stored value); the ids written, in any order. One statement for
        the whole batch; a refused state is no error (the caller raises ``LeaseLostError``)."""
        ...


@runtime_checkable
class StorageBackend(Protocol):
    """A place to keep jobs. Implementations: ``MemoryBackend``, ``SqliteBackend``,
    ``PostgresBackend``."""

    #: ``"memory"``, ``"sqlite"`` or ``"postgres"``.
    name: str
    #: LISTEN/NOTIFY wake-ups are available.
    supports_listen: bool
    #: ``insert_jobs(..., connection=)`` and ``acquire()`` work (the caller's transaction).
    supports_transactions: bool
    #: ``insert_jobs`` takes a :class:`~soniq.types.JobStream` as it is built: it writes the
    #: first jobs while later ones are validated, and nothing if one of them fails.
    streams_inserts: bool

    # Optional capabilities (DESIGN.md §2): a store of soniq.backends.stores, or None where the
    # backend lacks it. Callers read them here and check for None; they never probe. Read-only,
    # so an adapter may declare its own store class (or None) and mypy still checks it fits.
    @property
    def dead_letters(self) -> DeadLetterStore | None: ...
    @property
    def schedules(self) -> ScheduleStore | None: ...
    @property
    def webhooks(self) -> WebhookStore | None: ...
    @property
    def logs(self) -> LogStore | None: ...
    @property
    def dashboard(self) -> DashboardStore | None: ...
    @property
    def definitions(self) -> DefinitionStore | None: ...
    @property
    def queues(self) -> QueueStore | None: ...
    @property
    def audit(self) -> AuditStore | None: ...
    @property
    def workflows(self) -> WorkflowStore | None: ...
    @property
    def job_states(self) -> JobStateStore: ...
    @property
    def steps(self) -> StepStore: ...
    @property
    def awaits(self) -> AwaitStore | None:
        """Pushes the end of awaited jobs (:mod:`soniq.backends.awaiting`); None: waiters poll."""
        ...
    @property
    def probe(self) -> Callable[[], Awaitable[dict[str, Any]]] | None:
        """Facts for :func:`database_info` (``soniq doctor``, ``migrate-status``), read without
        the schema check; None where there is no database to probe (memory)."""
        ...

    async def initialize(self) -> None:
        """Open connections (idempotent). Embedded backends create their schema here; PostgreSQL
        checks it and raises :class:`~soniq.errors.SchemaMissingError` naming ``soniq setup``."""
        ...

    async def close(self) -> None:
        """Release every connection (idempotent)."""
        ...

    async def migrate(self) -> list[str]:
        """Create the database if needed and apply pending migrations under a lock; return the
        names applied (empty when up to date)."""
        ...

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        """Lend a pooled connection for the caller's own SQL (PostgreSQL only; others raise
        :class:`~soniq.errors.UnsupportedOperationError`)."""
        ...

    async def insert_jobs(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        """Insert jobs (in one statement per chunk where the driver allows), wake listeners once
        per queue, and return the ids in input order (the standing id where a ``dedup_key``
        blocked).
        With ``connection=``, the insert joins that connection's transaction. ``jobs`` is a
        :class:`~soniq.types.JobStream` only when ``streams_inserts`` (and never with
        ``connection=``).

        **Dependencies** (``NewJob.depends_on``: stored jobs or jobs earlier or later in the same
        call): every id must exist, else :class:`~soniq.errors.ValidationError` naming the
        missing ones and nothing is written. The dependencies are locked while the edges go in,
        so none finishes unseen. A dependency already ``done`` is satisfied; one already
        ``dead_letter``/``cancelled`` applies the job's ``on_dependency_failure`` at once
        (``cancel``: the job is stored ``cancelled``; ``run``: satisfied; ``wait``: it waits).
        The job is stored ``waiting`` with ``waiting_on`` = its unsatisfied edges, else
        ``queued``. A limited job (concurrency key) that waits is stored parked (it takes its
        slot once released, by a hand-over or the reconciliation).

        **The fan-in protocol** (every backend, whatever path ends a job: finish, cancel,
        rescue, delete): when a job with dependents ends ``done``, each of its unsatisfied edges
        becomes satisfied and the dependent's ``waiting_on`` drops by one; at zero the dependent
        is ``queued`` (and woken). When it ends ``dead_letter``/``cancelled`` or is deleted
        unfinished: ``run`` dependents are satisfied the same way, ``cancel`` dependents are
        cancelled (and, transitively, their own ``cancel`` dependents), ``wait`` ones keep
        waiting (a replay that ends ``done`` satisfies them). An edge is satisfied at most once.
        It happens in the transaction that ended the job."""
        ...

    async def insert_workflow(self, workflow_id: str, name: str, kind: str,
                              jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        """Write the workflow row (``kind``: ``"workflow"`` or ``"batch"``) and its steps
        (``jobs``, each carrying ``workflow_id`` and a ``step_name``; dependencies among them as
        ``insert_jobs`` takes them) in one transaction -- the caller's with ``connection=`` --
        so a workflow is stored whole or not at all; the job ids in input order. Raises like
        ``insert_jobs``, before anything is written."""
        ...

    async def dependency_results(self, job_id: str) -> list[DependencyResult]:
        """The dependencies of ``job_id`` with their stored results (for
        ``ctx.dependency_results``), in enqueue (id) order; [] without any."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def list_jobs(self, *, queue: str | None = None, status: str | None = None,
                        limit: int = 100, offset: int = 0) -> list[JobRecord]:
        """Newest first (by id, which is time-ordered)."""
        ...

    async def cancel_job(self, job_id: str) -> CancelOutcome | None:
        """``queued`` or ``waiting`` -> ``cancelled`` (returns ``"cancelled"``); a ``processing`` job gets a
        cancel request that its worker acts on (PostgreSQL also notifies ``soniq_cancel`` with the
        id; returns ``"requested"``). None when neither applied."""
        ...

    async def delete_job(self, job_id: str) -> bool:
        """Remove the row in any state; True when it existed."""
        ...

    async def queue_stats(self) -> list[QueueStats]:
        """Counts per queue and status, sorted by queue name; ``[]`` when there are no jobs."""
        ...

    async def claim_jobs(self, worker_id: str, queues: Sequence[str] | None, limit: int,
                         *, now: datetime | None = None,
                         paused: frozenset[str] = frozenset(),
                         limited: frozenset[str] = frozenset(),
                         rates: Sequence[RateGate] = (),
                         unknown: frozenset[str] = frozenset()) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs (all queues when ``queues`` is None), never from a
        paused queue nor of a job name in ``unknown`` (the names the caller met and did not
        register: left for the workers that know them), and each within the limits that govern
        its start:

        - a queue with a stored ``concurrency_limit`` or ``rate_limit`` (``soniq_queues``) is
          *gated*: its jobs are claimed only while the caller names it in ``limited``, and then
          only while fewer than ``concurrency_limit`` of its jobs are ``processing`` and its
          queue bucket has a token (one taken per start);
        - a row stored with a ``rate_key`` is claimed only for a job name in ``rates``, with a
          token of the bucket (job name, ``rate_key``) at the caller's :class:`RateGate` rate,
          and not while that bucket is held (``RateLimited``). Its queue's pause applies; its
          queue's limits govern the queue's other rows only.

        The backend reads the stored settings and buckets itself, inside the claim's database
        work, so this is exact across processes whatever the caller believes; ``paused`` and
        ``limited`` (the caller's cached view) only say which claims to try: a backend may pick
        a shape that skips the queues in ``paused | limited`` without walking their backlog (a
        caller that names a gated queue in ``paused`` instead of ``limited`` claims nothing of
        it, and does not walk it). A bucket without a
        stored state is full; tokens refill as :meth:`soniq.limits.Rate.tokens` says."""
        ...

    async def complete_jobs(self, outcomes: Sequence[JobOutcome],
                            *, now: datetime | None = None) -> list[str]:
        """Write outcomes where the lease still holds; return the ids that were accepted.
        A ``QUEUED`` outcome for a job with a cancel request ends ``cancelled`` instead. An
        accepted outcome with ``rate_hold`` holds its job's rate bucket (job name and the row's
        ``rate_key``, ``''`` without one) until then, for every worker (the later of the
        stored hold and this one)."""
        ...

    async def register_worker(self, worker: WorkerInfo, *, now: datetime | None = None) -> None:
        """Record a worker (upsert) with a fresh heartbeat."""
        ...

    async def heartbeat(self, worker_id: str, *, now: datetime | None = None,
                        job_names: Sequence[str] = ()) -> list[str]:
        """Refresh the worker's heartbeat (re-creating its row, with ``job_names``, if it was
        removed); return the ids of its ``processing`` jobs that have a cancel request."""
        ...

    async def unregister_worker(self, worker_id: str) -> None: ...

    async def list_workers(self) -> list[dict[str, Any]]:
        """Registered workers: ``id, hostname, pid, queues, concurrency, started_at,
        last_heartbeat, job_names`` (a list)."""
        ...

    async def rescue_jobs(self, stale_after: float, *, now: datetime | None = None) -> list[str]:
        """Give back the jobs of workers silent for ``stale_after`` seconds (or with no worker
        row): ``queued`` again with a ``WorkerLost`` error appended and the attempt kept, or
        ``dead_letter`` when it was the last attempt, or ``cancelled`` when cancel was requested.
        Remove the silent workers' rows. Return the rescued ids."""
        ...

    async def dead_letter_unknown(self, known: Sequence[str], *, grace: float,
                                  now: datetime | None = None) -> list[str]:
        """Dead-letter the ``queued`` jobs (parked ones too) due for at least ``grace`` seconds
        whose name is not in ``known``, each with an ``UnknownJob`` error entry
        (:func:`unknown_job_error`) and its attempts untouched; a slot one held goes on, its
        dependents settle as for any dead letter. Return their ids, sorted (PostgreSQL ends at
        most one batch per call; the next cleanup round takes the rest)."""
        ...

    async def park_job(self, job_id: str, lease_id: str, concurrency_key: str, limit: int,
                       *, now: datetime | None = None) -> bool:
        """Give a claimed job that was enqueued without its concurrency key (by a producer that
        knew nothing of the limit) back to the queue with ``concurrency_key`` set, its attempt
        refunded, through the slot path: it takes a slot if fewer than ``limit`` are taken, else
        it is parked. Fenced by lease; False when not applied."""
        ...

    async def reconcile_slots(self, limits: Mapping[str, int]) -> int:
        """The safety net of concurrency limits, for job names in ``limits`` (name -> limit):
        for each key with parked jobs, recount its active jobs from the jobs table and unpark up
        to the limit in id order (a raised limit, a slot lost by a crash, a replayed job).
        Returns how many jobs were unparked."""
        ...

    async def prune_jobs(self, *, now: datetime | None = None,
                         result_ttl: float | None = None) -> int:
        """Delete ``done`` and ``cancelled`` jobs whose ``expires_at`` has passed -- and, given
        ``result_ttl``, jobs cancelled before they started (they have no ``expires_at``) that
        finished more than ``result_ttl`` seconds ago -- except a dependency whose dependents
        have not all finished (they read its result)."""
        ...

    async def prune_control(self, *, audit_retention: float,
                            now: datetime | None = None) -> int:
        """Delete the flow-control rows that carry no information, in short batches: slot rows
        (``soniq_slots``) with ``active = 0`` whose key has no parked job; rate buckets
        (``soniq_rate_buckets``) full again -- last refilled at least
        :data:`~soniq.limits.LONGEST_PERIOD` ago, or never -- not held (``blocked_until`` unset
        or past) and whose key has no queued rate-limited job (a missing bucket is a full one);
        dedup keys (``soniq_unique_keys``) whose ``unique_for`` window has passed and whose job
        has ended or is gone (see :mod:`soniq.backends.keys`); audit entries older than ``audit_retention`` seconds (0: keep them all). A slot taken or
        a bucket used meanwhile is never deleted. Returns how many rows were deleted."""
        ...

    async def claim_maintenance(self, task: str, interval: float,
                                *, now: datetime | None = None) -> bool:
        """True for exactly one caller per ``interval`` seconds per ``task`` across every worker
        sharing the database (the leader for that round)."""
        ...

    async def listen(self, on_notify: Callable[[str, str], None],
                     *, task_status: TaskStatus[None]) -> None:
        """(``supports_listen`` only.) Hold a dedicated connection listening on ``soniq_jobs``
        (payload: queue), ``soniq_cancel`` (payload: job id) and ``soniq_queues`` (a queue's
        setting changed; payload: queue); call ``on_notify(channel,
        payload)`` in the caller's event loop; ``task_status.started()`` once listening. Returns
        never; raises :class:`~soniq.errors.DatabaseError` when the connection is lost."""
        ...


#: The jobs table's columns, in the order adapters select them.
JOB_COLUMNS = (
    "id", "job_name", "queue", "priority", "status", "args", "result", "attempts", "max_attempts",
    "scheduled_at", "created_at", "updated_at", "started_at", "finished_at", "expires_at", "errors",
    "worker_id", "lease_id", "dedup_key", "workflow_id", "step_name", "progress",
)


#: Every status, as the column names of a queue's counts.
STATUSES = tuple(status.value for status in JobStatus)


def queue_stats_row(queue: str, counts: Mapping[str, int]) -> QueueStats:
    """One queue's :class:`~soniq.types.QueueStats` from its counts by status (missing: 0);
    ``total`` is their sum."""
    by_status = {status: int(counts.get(status) or 0) for status in STATUSES}
    return cast("QueueStats", {"queue": queue, "total": sum(by_status.values()), **by_status})


def job_record(row: Mapping[str, Any]) -> JobRecord:
    """Build the public record from a row whose JSON columns are text and whose timestamps are
    aware datetimes (adapters convert driver types first). The one place the shape is decided."""
    errors = _stored_json(row["errors"]) or []
    if not isinstance(errors, list):
        errors = [errors]
    last = errors[-1] if errors else None
    worker_id = row["worker_id"]
    return {
        "id": str(row["id"]),
        "job_name": row["job_name"],
        "queue": row["queue"],
        "priority": row["priority"],
        "status": row["status"],
        "args": _stored_json(row["args"]),
        "result": _stored_json(row["result"]),
        "attempts": row["attempts"],
        "max_attempts": row["max_attempts"],
        "scheduled_at": row["scheduled_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "expires_at": row["expires_at"],
        "errors": errors,
        "last_error": (f"{last.get('type')}: {last.get('message')}" if isinstance(last, dict)
                       else None if last is None else str(last)),
        "worker_id": None if worker_id is None else str(worker_id),
        "dedup_key": row["dedup_key"],
        "workflow_id": None if row["workflow_id"] is None else str(row["workflow_id"]),
        "step_name": row["step_name"],
        "progress": _stored_json(row["progress"]),
    }


def _stored_json(text: str | bytes | None) -> Any:
    """Decode a JSON column. A row written by hand (SQLite does not check JSON) may hold anything:
    show what is stored instead of failing every read that touches the row."""
    try:
        return loads(text)
    except (ValueError, RecursionError):  # not JSON, bytes that are not text, nested too deep
        return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def worker_lost_error(worker_id: object, attempt: int, now: datetime) -> dict[str, Any]:
    """The ``errors`` entry recorded when a job is rescued from a worker that went silent."""
    return {
        "attempt": attempt,
        "type": "WorkerLost",
        "message": f"worker {worker_id} stopped heartbeating while running this attempt",
        "traceback": None,
        "at": now.isoformat(),
    }


def unknown_job_error(job_name: str, attempt: int, grace: float, now: datetime) -> dict[str, Any]:
    """The ``errors`` entry recorded when the cleanup dead-letters a job no live worker knows
    (``unknown_job_grace`` is ``grace``)."""
    return {
        "attempt": attempt,
        "type": "UnknownJob",
        "message": f"no live worker has registered job {job_name!r} for {grace:g} s "
                   "(unknown_job_grace)",
        "traceback": None,
        "at": now.isoformat(),
    }


@asynccontextmanager
async def no_connections(backend: str) -> AsyncIterator[Any]:
    """``acquire()`` of a backend that has no connections to lend (memory, SQLite)."""
    raise UnsupportedOperationError(
        f"the {backend} backend has no connections to lend; backend.acquire() and "
        "transactional enqueue need PostgreSQL"
    )
    yield  # pragma: no cover


def refuse_connection(backend: str) -> NoReturn:
    """``insert_jobs(connection=...)`` on a backend that cannot share a caller's transaction."""
    raise UnsupportedOperationError(
        f"enqueue(connection=...) joins your database transaction, which the {backend} backend "
        "cannot do; use PostgreSQL for transactional enqueue"
    )


def database_info(backend: str, facts: Mapping[str, Any]) -> DatabaseInfo:
    """A backend probe's facts as :class:`~soniq.types.DatabaseInfo`, with the shipped migrations
    not yet applied (what ``soniq doctor`` and ``soniq migrate-status`` report)."""
    applied: list[str] = facts["applied_migrations"]
    return {
        "backend": backend,
        "server_version": facts.get("server_version"),
        "applied_migrations": applied,
        "pending_migrations": pending_migrations(backend, applied),
        "round_trip": facts.get("round_trip"),
        "clock_skew": facts.get("clock_skew"),
        "transaction_pooling": facts.get("transaction_pooling"),
        "listen_works": facts.get("listen_works"),
        "max_connections": facts.get("max_connections"),
        "via_proxy": facts.get("via_proxy"),
        "listen_url": facts.get("listen_url"),
    }
