"""``Worker``: one AnyIO task group that claims, runs, retries, heartbeats, rescues and stops cleanly.

::

    Worker.run(*, task_status)
     ├─ await tg.start(heartbeat.run)   the worker row exists before anything is claimed
     ├─ tg.start_soon(finisher.run)     outcomes written in batches, fenced by lease
     ├─ tg.start_soon(states.run)       progress and checkpoints in batches, fenced by lease
     ├─ await tg.start(listener.run)    LISTEN active, or polling with a logged reason
     ├─ tg.start_soon(cleanup.run)      rescue silent workers' jobs; prune past result_ttl, idle limits
     ├─ tg.start_soon(service.run)      each Service the app registered
     └─ fetcher.run()                   claims up to free slots; each job a child task
    task_status.started(worker_id)

``stop()`` stops claiming and lets running jobs finish within ``shutdown_timeout`` (then gives them
back without using an attempt). Cancelling the task that runs the worker (a second signal, or the
embedding application's own cancellation) gives running jobs back at once. Either way the buffered
outcomes are written and the worker row removed, shielded and bounded. A job that ignores
cancellation keeps the worker's task group open; ``abandon()`` gives such jobs back and writes the
final state so that the process can end without them (the CLI does so a few seconds after the
second signal). Embedded use installs no signal handlers: signals belong to the CLI.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

import anyio

from soniq.errors import ValidationError
from soniq.ids import new_id
from soniq.limits import RateGate
from soniq.runtime.cleanup import Cleanup
from soniq.runtime.executor import Executor
from soniq.runtime.fetcher import Fetcher
from soniq.runtime.finisher import Finisher
from soniq.runtime.heartbeat import Heartbeat, job_definitions
from soniq.runtime.listener import Listener
from soniq.runtime.progress import JobStateWriter
from soniq.serialization import utc_now
from soniq.types import JobOutcome, JobStatus, WorkerInfo

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.registry import JobRegistry
    from soniq.runtime.seams import EventDispatcher, Hooks, PayloadCodec, Service
    from soniq.settings import SoniqSettings

__all__ = ["Worker"]

logger = logging.getLogger("soniq.worker")

#: Bound on the shielded final writes (outcomes, worker row) when a worker stops.
FINAL_WRITE_TIMEOUT = 10.0


class Worker:
    """Runs jobs from storage. Build it with ``app.worker(...)``; run it with ``await
    worker.run()`` or ``await task_group.start(worker.run)``."""

    def __init__(self, *, backend: StorageBackend, registry: JobRegistry,
                 settings: SoniqSettings, hooks: Hooks, events: EventDispatcher,
                 codec: PayloadCodec, services: Sequence[Service] = (),
                 concurrency: int | None = None, queues: Sequence[str] | None = None,
                 run_once: bool = False, clock: Callable[[], datetime] = utc_now) -> None:
        self.id = new_id()
        if concurrency is None:
            concurrency = settings.concurrency
        elif not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        self.concurrency = concurrency
        self.queues = tuple(queues) if queues is not None else None
        self.run_once = run_once
        self._backend = backend
        self._services = list(services)
        self.finisher = Finisher(backend, error_retry_delay=settings.error_retry_delay)
        self.states = JobStateWriter(backend.job_states, codec, steps=backend.steps,
                                     max_checkpoint_bytes=settings.max_result_bytes,
                                     error_retry_delay=settings.error_retry_delay)
        self.executor = Executor(
            registry=registry, settings=settings, hooks=hooks, events=events, codec=codec,
            worker_id=self.id, put_outcome=self.finisher.put, clock=clock,
            thread_limiter=anyio.CapacityLimiter(self.concurrency),
            park=lambda job, key, limit: backend.park_job(job.id, job.lease_id, key, limit),
            dependencies=backend.dependency_results, states=self.states,
        )
        self.finisher.on_unstorable = self.executor.unstorable
        self.finisher.on_steps_ended = events.steps_ended
        self.fetcher = Fetcher(
            backend, self.executor, worker_id=self.id, queues=self.queues,
            concurrency=self.concurrency, poll_interval=settings.poll_interval,
            shutdown_timeout=settings.shutdown_timeout,
            error_retry_delay=settings.error_retry_delay, run_once=run_once,
            flush=self.finisher.flush,
            rates=[RateGate(spec.name, spec.rate_limit) for spec in registry
                   if spec.rate_limit is not None],
        )
        self.heartbeat = Heartbeat(
            backend, self.executor,
            WorkerInfo(self.id, socket.gethostname(), os.getpid(), self.queues, self.concurrency),
            interval=settings.heartbeat_interval,
            definitions=lambda: job_definitions(registry, settings),
        )
        self.cleanup = Cleanup(backend, interval=settings.cleanup_interval,
                               stale_after=settings.heartbeat_timeout,
                               error_retry_delay=settings.error_retry_delay, events=events,
                               limits=lambda: {spec.name: spec.concurrency_limit
                                               for spec in registry
                                               if spec.concurrency_limit is not None},
                               audit_retention=settings.audit_retention,
                               unknown_job_grace=settings.unknown_job_grace,
                               result_ttl=settings.result_ttl)
        self.listener = Listener(backend, self.fetcher, self.executor,
                                 poll_interval=settings.poll_interval,
                                 required=settings.listen_url is not None)
        self._scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.id} concurrency={self.concurrency} queues={self.queues or 'all'}>"

    @property
    def processed(self) -> int:
        """Attempts this worker has run to an outcome."""
        return self.executor.completed

    def stop(self) -> None:
        """Graceful stop: claim nothing more; running jobs get ``shutdown_timeout`` to finish."""
        self.fetcher.stop()

    def cancel(self) -> None:
        """Immediate stop: running jobs are given back to the queue without using an attempt."""
        self.fetcher.stop()
        if self._scope is not None:
            self._scope.cancel()

    async def abandon(self, bound: float) -> list[str]:
        """Last resort after :meth:`cancel`, for jobs that do not end (they ignore cancellation):
        give them back without using an attempt and write the final state, shielded, within
        ``bound`` seconds. Their tasks keep running: the caller ends the process. Returns the
        ids of the jobs given back."""
        jobs = [entry.job for entry in self.executor.running.values()]
        for job in jobs:  # left in `running`: their tasks are still alive
            self.finisher.put(JobOutcome(job.id, job.lease_id, JobStatus.QUEUED,
                                         refund_attempt=True))
        with anyio.CancelScope(shield=True), anyio.move_on_after(bound):
            await self.heartbeat.stop()  # its task is alive too: it must not re-create the row
            await self._final_writes()
        return [job.id for job in jobs]

    def wake(self, queue: str) -> None:
        """A job was enqueued in this process: claim now instead of at the next poll."""
        self.fetcher.wake_for(queue)

    async def run(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped; ``task_status.started(worker_id)`` once claiming can begin."""
        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as tg:
                    await tg.start(self.heartbeat.run)
                    tg.start_soon(self.finisher.run)
                    tg.start_soon(self.states.run)
                    if self._backend.supports_listen:
                        await tg.start(self.listener.run)
                    if not self.run_once:
                        tg.start_soon(self.cleanup.run)
                        for service in self._services:
                            await tg.start(service.run)
                    logger.debug("worker %s started", self.id)
                    task_status.started(self.id)
                    await self.fetcher.run()
                    # Let a beat in flight finish rather than cancel it: a cancelled statement
                    # can still commit on the server after the row is removed, re-creating it.
                    with anyio.move_on_after(FINAL_WRITE_TIMEOUT):
                        await self.heartbeat.stop()
                        await self.cleanup.stop()  # likewise a maintenance transaction
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_WRITE_TIMEOUT) as bound:
                await self._final_writes()
            if bound.cancelled_caught:
                logger.error("worker %s could not write its final state within %gs; the cleanup "
                             "of another worker will rescue its jobs", self.id, FINAL_WRITE_TIMEOUT)

    async def _final_writes(self) -> None:
        try:
            await self.finisher.flush()
        except Exception:
            logger.exception("worker %s could not write %d job outcome(s) on shutdown; those "
                             "jobs will be rescued", self.id, self.finisher.buffered)
        try:
            await self._backend.unregister_worker(self.id)
        except Exception:
            logger.exception("worker %s could not remove its row", self.id)
