"""Crash recovery and retention, once per ``cleanup_interval`` across all workers.

Each round, one worker (whichever claims the round in storage) re-queues the jobs of workers silent
for ``heartbeat_timeout`` — the attempt stays used, so a job that kills its worker every time ends
in the dead-letter state instead of looping — deletes finished jobs past ``result_ttl`` and then
the workflow rows left without a step (``WorkflowStore.prune``),
reconciles the concurrency slots of the limited jobs it knows (``reconcile_slots``: a raised
limit, a replayed job, a slot a crash lost), then deletes the flow-control rows that carry no
information (``prune_control``: idle slot rows, full rate buckets, audit entries past
``audit_retention``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from soniq.errors import DatabaseError
from soniq.runtime.rounds import Rounds
from soniq.runtime.seams import JobEvent
from soniq.serialization import utc_now

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.runtime.seams import EventDispatcher, EventKind

__all__ = ["Cleanup"]

logger = logging.getLogger("soniq.worker")


#: A rescued job's new status -> the event a worker reports for that outcome.
_RESCUE_EVENTS: dict[str, EventKind] = {"queued": "failed", "dead_letter": "dead_letter",
                                        "cancelled": "cancelled"}


class Cleanup:
    def __init__(self, backend: StorageBackend, *, interval: float, stale_after: float,
                 error_retry_delay: float, events: EventDispatcher,
                 limits: Callable[[], Mapping[str, int]] = dict,
                 audit_retention: float = 0.0, result_ttl: float | None = None) -> None:
        self._backend = backend
        self._result_ttl = result_ttl  # None: cancelled-before-start jobs stay
        self._audit_retention = audit_retention  # 0: keep the audit log
        self._limits = limits
        self._events = events
        self._interval = interval
        self._stale_after = stale_after
        self._error_retry_delay = error_retry_delay
        self._rounds = Rounds()  # a round in flight finishes before stop() returns

    async def stop(self) -> None:
        """Start no more rounds, after the one in flight (cancelled, its transaction would be
        rolled back by a pool reset that logs an error)."""
        await self._rounds.stop()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                async with self._rounds.round() as running:
                    if not running:
                        return
                    await self.tick()
            except DatabaseError as exc:
                logger.warning("cleanup failed, retrying in %gs: %s", self._error_retry_delay, exc)
                await anyio.sleep(self._error_retry_delay)
                continue
            await anyio.sleep(self._interval)

    async def tick(self) -> tuple[list[str], int] | None:
        """Rescue and prune if this worker leads this round: (rescued ids, pruned count)."""
        if not await self._backend.claim_maintenance("cleanup", self._interval):
            return None
        rescued = await self._backend.rescue_jobs(self._stale_after)
        if rescued:
            logger.warning("rescued %d job(s) from silent workers: %s", len(rescued),
                           ", ".join(rescued))
            await self._report(rescued)
        pruned = await self._backend.prune_jobs(result_ttl=self._result_ttl)
        if pruned:
            logger.debug("pruned %d finished job(s) past result_ttl", pruned)
        store = self._backend.workflows
        emptied = 0 if store is None else await store.prune()
        if emptied:
            logger.debug("pruned %d workflow row(s) without steps", emptied)
        limits = self._limits()
        if limits:
            unparked = await self._backend.reconcile_slots(limits)
            if unparked:
                logger.info("reconciled concurrency slots: %d parked job(s) may run", unparked)
        idle = await self._backend.prune_control(audit_retention=self._audit_retention)
        if idle:
            logger.debug("pruned %d idle slot, full rate bucket or old audit row(s)", idle)
        return rescued, pruned

    async def _report(self, rescued: list[str]) -> None:
        """Each rescued job's event (failed, dead_letter or cancelled), for whoever listens, and
        the workflows whose step the rescue ended (``EventDispatcher.steps_ended``)."""
        events = self._events
        if not (events.wants_steps
                or any(events.wants(kind) for kind in _RESCUE_EVENTS.values())):
            return
        now = utc_now()
        ended: set[str] = set()
        for job_id in rescued:
            record = await self._backend.get_job(job_id)
            kind = None if record is None else _RESCUE_EVENTS.get(record["status"])
            if record is None or kind is None:
                continue  # finished meanwhile, or already running again elsewhere
            if kind != "failed" and record["workflow_id"] is not None:
                ended.add(record["workflow_id"])
            if not events.wants(kind):
                continue
            last = record["errors"][-1] if record["errors"] else {}
            error = (None if kind == "cancelled"
                     else f"{last.get('type', 'WorkerLost')}: {last.get('message', '')}")
            events.emit(JobEvent(kind, job_id, record["job_name"], record["queue"],
                                 record["attempts"], now, error=error))
        if ended:
            events.steps_ended(ended)
