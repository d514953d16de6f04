"""``MemoryBackend``: the reference semantics in plain Python, and the test double.

Everything lives in one process, in dicts; nothing survives the process. Rows hold JSON text like
the database backends, so a test on memory catches values production could not store. Every
method body runs without an ``await`` between reading and writing, so operations are atomic under
any AnyIO backend.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio

from soniq.backends.awaiting import AWAITED_CHANNEL
from soniq.backends.base import (
    StorageBackend,
    job_record,
    no_connections,
    queue_stats_row,
    refuse_connection,
    unknown_job_error,
    worker_lost_error,
)
from soniq.backends.dependencies import ENDED, edges_of, failure_policy
from soniq.backends.keys import ALIVE, Standing, plan
from soniq.backends.memory.awaiting import MemoryAwaitStore
from soniq.backends.memory.control import MemoryAuditStore, MemoryQueueStore
from soniq.backends.memory.dependencies import Dependencies
from soniq.backends.memory.gates import Gates
from soniq.backends.memory.job_states import MemoryJobStateStore
from soniq.backends.memory.slots import PARKED, Slots
from soniq.backends.memory.steps import MemoryStepStore
from soniq.backends.memory.stores import (
    MemoryDashboardStore,
    MemoryDeadLetterStore,
    MemoryDefinitionStore,
    MemoryLogStore,
    MemoryScheduleStore,
    MemoryWebhookStore,
)
from soniq.backends.memory.workflows import MemoryWorkflowStore
from soniq.serialization import dumps, loads, utc_now
from soniq.types import (
    CancelOutcome,
    ClaimedJob,
    JobOutcome,
    JobRecord,
    JobStatus,
    NewJob,
    QueueStats,
    WorkerInfo,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from datetime import datetime

    from anyio.abc import TaskStatus

    from soniq.limits import RateGate
    from soniq.types import DependencyResult

__all__ = ["MemoryBackend"]

_STATUSES = tuple(status.value for status in JobStatus)
#: A dedup key is held in these statuses only (the job has not started yet).
_NOT_STARTED = (JobStatus.WAITING, JobStatus.QUEUED)


class MemoryBackend:
    """In-process storage for tests and demos; one instance is one private database."""

    name = "memory"
    supports_listen = True  # in-process: listeners are called straight from the writing call
    supports_transactions = False
    streams_inserts = False
    #: No database to probe (``app.database_info()`` raises).
    probe = None

    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, Any]] = {}
        # dedup_key -> (id of the job standing on it, end of its unique_for window): the keys
        # table (soniq.backends.keys).
        self._keys: dict[str, tuple[str, datetime | None]] = {}
        self._workers: dict[str, dict[str, Any]] = {}
        self._maintenance: dict[str, datetime] = {}
        self._listeners: list[Callable[[str, str], None]] = []
        self._slots = Slots(self._jobs)
        # The feature stores (soniq.backends.stores) over these rows.
        self.dead_letters = MemoryDeadLetterStore(self._jobs, self._notify, self._slots.park)
        self.schedules = MemoryScheduleStore(self.insert_jobs)
        self.webhooks = MemoryWebhookStore()
        self.logs = MemoryLogStore(self._jobs)
        self.dashboard = MemoryDashboardStore(self._jobs, self.queue_stats)
        self.definitions = MemoryDefinitionStore(self._jobs)
        self.audit = MemoryAuditStore()
        self.queues = MemoryQueueStore(self.audit, self._notify)
        self._gates = Gates(self._jobs, self.queues)
        self._deps = Dependencies(self._jobs, self._slots, self._set_status, self._notify)
        self.workflows = MemoryWorkflowStore(self._jobs, self._deps.given)
        self.job_states = MemoryJobStateStore(self._jobs)
        self.steps = MemoryStepStore(self._jobs)
        self.awaits = MemoryAwaitStore(self._jobs, self._listeners)

    async def initialize(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def migrate(self) -> list[str]:
        return []

    def acquire(self) -> Any:
        return no_connections(self.name)

    async def insert_jobs(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        if connection is not None:
            refuse_connection(self.name)
        self._deps.check(jobs)
        now = utc_now()
        ids: list[str] = []
        answer = None
        dependents = []
        if any(job.dedup_key is not None for job in jobs):
            decided = plan(jobs, self._standing(jobs), now)
            answer = decided.ids
            jobs = decided.insert
            self._keys.update(decided.take)
            for job_id, (args, at) in decided.replace.items():
                self._jobs[job_id].update(args=args, scheduled_at=at, updated_at=now)
        for job in jobs:
            waits = bool(job.depends_on)
            self._jobs[job.id] = {
                "id": job.id, "job_name": job.job_name, "queue": job.queue,
                "priority": job.priority, "args": job.args,
                "status": (JobStatus.WAITING if waits else JobStatus.QUEUED).value,
                "result": None, "attempts": 0, "max_attempts": job.max_attempts,
                "scheduled_at": job.scheduled_at or now, "created_at": now, "updated_at": now,
                "started_at": None, "finished_at": None, "expires_at": None, "errors": "[]",
                "worker_id": None, "lease_id": None, "dedup_key": job.dedup_key,
                "cancel_requested": False, "concurrency_key": job.concurrency_key, "hold": None,
                "rate_key": job.rate_key, "waiting_on": len(edges_of(job)) if waits else None,
                "on_dependency_failure": failure_policy(job), "has_dependents": False,
                "workflow_id": job.workflow_id, "step_name": job.step_name, "awaited": False,
                "progress": None, "checkpoint": None,
            }
            if waits:  # a limited one waits parked, without a slot
                dependents.append(job)
                self._jobs[job.id]["hold"] = None if job.concurrency_key is None else PARKED
            elif job.concurrency_key is not None:
                self._slots.admit(self._jobs[job.id], job.concurrency_limit)
            ids.append(job.id)
        limits = {job.id: job.concurrency_limit for job in dependents}
        for row in self._deps.link(dependents, now):  # released at once: admitted as new
            if row["concurrency_key"] is not None:
                self._slots.admit(row, limits[row["id"]])
        for queue in {job.queue for job in jobs}:
            self._notify("soniq_jobs", queue)
        return ids if answer is None else answer

    def _standing(self, jobs: Sequence[NewJob]) -> dict[str, Standing]:
        """The stored keys of ``jobs`` with their standing jobs."""
        standing = {}
        for job in jobs:
            key = job.dedup_key
            if key is not None and key in self._keys:
                job_id, expires_at = self._keys[key]
                row = self._jobs.get(job_id)
                standing[key] = (Standing(job_id, expires_at, None, None) if row is None else
                                 Standing(job_id, expires_at, row["status"], row["created_at"]))
        return standing

    def _notify(self, channel: str, payload: str) -> None:
        for listener in list(self._listeners):
            listener(channel, payload)

    def _set_status(self, row: dict[str, Any], status: str, now: datetime) -> None:
        """Change a row's status. The row shows its dedup key until the job starts (what the
        key blocks is decided from the status: soniq.backends.keys)."""
        if row["status"] in _NOT_STARTED and status not in _NOT_STARTED:
            row["dedup_key"] = None
        row["status"] = status
        row["updated_at"] = now
        if row["awaited"] and status in ENDED:
            self._notify(AWAITED_CHANNEL, row["id"])

    async def insert_workflow(self, workflow_id: str, name: str, kind: str,
                              jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        ids = await self.insert_jobs(jobs, connection=connection)  # no await inside: atomic
        self.workflows.add(workflow_id, name, kind)
        return ids

    async def get_job(self, job_id: str) -> JobRecord | None:
        row = self._jobs.get(job_id) if isinstance(job_id, str) else None
        return None if row is None else job_record(row)

    async def list_jobs(self, *, queue: str | None = None, status: str | None = None,
                        limit: int = 100, offset: int = 0) -> list[JobRecord]:
        rows = [
            row for row in self._jobs.values()
            if (queue is None or row["queue"] == queue) and (status is None or row["status"] == status)
        ]
        rows.sort(key=lambda row: row["id"], reverse=True)
        return [job_record(row) for row in rows[offset:offset + limit]]

    async def cancel_job(self, job_id: str) -> CancelOutcome | None:
        row = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if row is not None and row["status"] == JobStatus.PROCESSING:
            row["cancel_requested"] = True
            self._notify("soniq_cancel", job_id)
            return "requested"
        if row is None or row["status"] not in _NOT_STARTED:
            return None
        now = utc_now()
        self._slots.release(row)
        self._set_status(row, JobStatus.CANCELLED.value, now)
        row["finished_at"] = now
        self._deps.ended(job_id, row["status"], now)
        return "cancelled"

    async def delete_job(self, job_id: str) -> bool:
        row = self._jobs.pop(job_id, None) if isinstance(job_id, str) else None
        if row is None:
            return False
        if row["status"] in (JobStatus.QUEUED, JobStatus.PROCESSING):
            self._slots.release(row)
        if row["awaited"] and row["status"] not in ENDED:
            self._notify(AWAITED_CHANNEL, job_id)
        if row["status"] not in ENDED:  # deleted unfinished: a failure for its dependents
            self._deps.ended(job_id, "deleted", utc_now())
        return True

    async def dependency_results(self, job_id: str) -> list[DependencyResult]:
        return self._deps.results(job_id)

    async def queue_stats(self) -> list[QueueStats]:
        counts: dict[str, dict[str, int]] = {}
        for row in self._jobs.values():
            per_queue = counts.setdefault(row["queue"], dict.fromkeys(_STATUSES, 0))
            per_queue[row["status"]] += 1
        return [queue_stats_row(queue, c) for queue, c in sorted(counts.items())]

    async def claim_jobs(self, worker_id: str, queues: Sequence[str] | None, limit: int,
                         *, now: datetime | None = None,
                         paused: frozenset[str] = frozenset(),
                         limited: frozenset[str] = frozenset(),
                         rates: Sequence[RateGate] = (),
                         unknown: frozenset[str] = frozenset()) -> list[ClaimedJob]:
        now = now or utc_now()
        wanted = None if queues is None else set(queues)
        stopped = self.queues.paused_now()  # the stored settings, not the caller's view
        due = sorted(
            (row for row in self._jobs.values()
             if row["status"] == JobStatus.QUEUED and row["hold"] is None
             and row["scheduled_at"] <= now and (wanted is None or row["queue"] in wanted)
             and row["queue"] not in stopped and row["job_name"] not in unknown),
            key=lambda row: (row["priority"], row["scheduled_at"], row["id"]),
        )
        claimed = []
        for row in self._gates.pick(due, limit, now, limited, rates):
            self._set_status(row, JobStatus.PROCESSING.value, now)
            row["attempts"] += 1
            row["worker_id"] = worker_id
            row["lease_id"] = str(uuid.uuid4())
            row["started_at"] = now
            claimed.append(ClaimedJob(
                id=row["id"], job_name=row["job_name"], queue=row["queue"],
                priority=row["priority"], args=row["args"], attempts=row["attempts"],
                max_attempts=row["max_attempts"], scheduled_at=row["scheduled_at"],
                created_at=row["created_at"], lease_id=row["lease_id"],
                concurrency_key=row["concurrency_key"],
                has_dependencies=row["waiting_on"] is not None,
                workflow_id=row["workflow_id"], checkpoint=row["checkpoint"],
            ))
        return claimed

    async def complete_jobs(self, outcomes: Sequence[JobOutcome],
                            *, now: datetime | None = None) -> list[str]:
        now = now or utc_now()
        accepted = []
        for outcome in outcomes:
            row = self._jobs.get(outcome.job_id)
            if (row is None or row["status"] != JobStatus.PROCESSING
                    or row["lease_id"] != outcome.lease_id):
                continue
            if outcome.error is not None:
                row["errors"] = dumps([*loads(row["errors"]), loads(outcome.error)])
            if outcome.refund_attempt:
                row["attempts"] -= 1
            status = outcome.status
            if status == JobStatus.QUEUED and row["cancel_requested"]:
                status = JobStatus.CANCELLED
            row["lease_id"] = None
            if status == JobStatus.QUEUED:
                row["scheduled_at"] = outcome.run_at or now
                row["worker_id"] = None
            else:
                row["result"] = outcome.result
                row["finished_at"] = now
                row["expires_at"] = outcome.expires_at
                self._slots.release(row)
            self._set_status(row, status.value, now)
            if outcome.rate_hold is not None:
                self._gates.hold(row["job_name"], row["rate_key"] or "", outcome.rate_hold)
            if status != JobStatus.QUEUED:
                self._deps.ended(row["id"], status.value, now)
            accepted.append(outcome.job_id)
        return accepted

    async def register_worker(self, worker: WorkerInfo, *, now: datetime | None = None) -> None:
        now = now or utc_now()
        self._workers[worker.id] = {
            "id": worker.id, "hostname": worker.hostname, "pid": worker.pid,
            "queues": list(worker.queues) if worker.queues is not None else None,
            "concurrency": worker.concurrency, "started_at": now, "last_heartbeat": now,
            "job_names": list(worker.job_names),
        }

    async def heartbeat(self, worker_id: str, *, now: datetime | None = None,
                        job_names: Sequence[str] = ()) -> list[str]:
        now = now or utc_now()
        worker = self._workers.setdefault(worker_id, {
            "id": worker_id, "hostname": "", "pid": 0, "queues": None, "concurrency": 0,
            "started_at": now, "last_heartbeat": now, "job_names": list(job_names),
        })
        worker["last_heartbeat"] = now
        return [
            row["id"] for row in self._jobs.values()
            if row["worker_id"] == worker_id and row["status"] == JobStatus.PROCESSING
            and row["cancel_requested"]
        ]

    async def unregister_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def list_workers(self) -> list[dict[str, Any]]:
        return [dict(worker, job_names=list(worker["job_names"]))
                for worker in sorted(self._workers.values(), key=lambda w: w["id"])]

    async def rescue_jobs(self, stale_after: float, *, now: datetime | None = None) -> list[str]:
        now = now or utc_now()
        cutoff = now - timedelta(seconds=stale_after)
        stale = {wid for wid, w in self._workers.items() if w["last_heartbeat"] < cutoff}
        rescued = []
        for row in self._jobs.values():
            if row["status"] != JobStatus.PROCESSING:
                continue
            if row["worker_id"] in self._workers and row["worker_id"] not in stale:
                continue
            error = worker_lost_error(row["worker_id"], row["attempts"], now)
            row["errors"] = dumps([*loads(row["errors"]), error])
            row["lease_id"] = None
            if row["cancel_requested"]:
                status = JobStatus.CANCELLED
            elif row["attempts"] >= row["max_attempts"]:
                status = JobStatus.DEAD_LETTER
            else:
                status = JobStatus.QUEUED
                row["scheduled_at"] = now
                row["worker_id"] = None
            if status != JobStatus.QUEUED:
                row["finished_at"] = now
                self._slots.release(row)
            self._set_status(row, status.value, now)
            if status != JobStatus.QUEUED:
                self._deps.ended(row["id"], status.value, now)
            rescued.append(row["id"])
        for wid in stale:
            del self._workers[wid]
        return rescued

    async def dead_letter_unknown(self, known: Sequence[str], *, grace: float,
                                  now: datetime | None = None) -> list[str]:
        now = now or utc_now()
        cutoff, names = now - timedelta(seconds=grace), set(known)
        ended = [row for row in self._jobs.values()
                 if row["status"] == JobStatus.QUEUED and row["job_name"] not in names
                 and row["scheduled_at"] <= cutoff]
        for row in ended:
            error = unknown_job_error(row["job_name"], row["attempts"], grace, now)
            row["errors"] = dumps([*loads(row["errors"]), error])
            row["finished_at"] = now
            self._slots.release(row)
            self._set_status(row, JobStatus.DEAD_LETTER.value, now)
            self._deps.ended(row["id"], JobStatus.DEAD_LETTER.value, now)
        return sorted(row["id"] for row in ended)

    async def park_job(self, job_id: str, lease_id: str, concurrency_key: str, limit: int,
                       *, now: datetime | None = None) -> bool:
        row = self._jobs.get(job_id)
        if (row is None or row["status"] != JobStatus.PROCESSING or row["lease_id"] != lease_id
                or row["concurrency_key"] is not None):
            return False
        now = now or utc_now()
        row.update(attempts=row["attempts"] - 1, lease_id=None, worker_id=None, scheduled_at=now,
                   concurrency_key=concurrency_key)
        self._set_status(row, JobStatus.QUEUED.value, now)
        self._slots.admit(row, limit)
        if row["hold"] is None:
            self._notify("soniq_jobs", row["queue"])
        return True

    async def reconcile_slots(self, limits: Mapping[str, int]) -> int:
        unparked = self._slots.reconcile(limits)
        if unparked:
            for queue in {row["queue"] for row in self._jobs.values()
                          if row["status"] == JobStatus.QUEUED}:
                self._notify("soniq_jobs", queue)
        return unparked

    async def prune_jobs(self, *, now: datetime | None = None,
                         result_ttl: float | None = None) -> int:
        now = now or utc_now()
        cutoff = None if result_ttl is None else now - timedelta(seconds=result_ttl)
        expired = [
            job_id for job_id, row in self._jobs.items()
            if row["status"] in (JobStatus.DONE, JobStatus.CANCELLED)
            and (row["expires_at"] < now if row["expires_at"] is not None
                 else row["status"] == JobStatus.CANCELLED and cutoff is not None
                 and row["finished_at"] is not None and row["finished_at"] < cutoff)
            and not (row["has_dependents"] and self._deps.needed(job_id))
        ]
        for job_id in expired:
            del self._jobs[job_id]
        self._deps.forget()
        return len(expired)

    async def prune_control(self, *, audit_retention: float,
                            now: datetime | None = None) -> int:
        now = now or utc_now()
        audit = (self.audit.prune(now - timedelta(seconds=audit_retention))
                 if audit_retention else 0)
        return self._slots.prune() + self._gates.prune(now) + audit + self._prune_keys(now)

    def _prune_keys(self, now: datetime) -> int:
        """Drop the keys that block nothing: window passed, job ended or gone."""
        idle = [key for key, (job_id, expires_at) in self._keys.items()
                if (expires_at is None or expires_at <= now)
                and self._jobs.get(job_id, {}).get("status") not in ALIVE]
        for key in idle:
            del self._keys[key]
        return len(idle)

    async def claim_maintenance(self, task: str, interval: float,
                                *, now: datetime | None = None) -> bool:
        now = now or utc_now()
        last = self._maintenance.get(task)
        if last is not None and last > now - timedelta(seconds=interval):
            return False
        self._maintenance[task] = now
        return True

    async def listen(self, on_notify: Callable[[str, str], None],
                     *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._listeners.append(on_notify)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._listeners.remove(on_notify)


# mypy checks the adapter against the seam, capabilities included.
_: type[StorageBackend] = MemoryBackend
