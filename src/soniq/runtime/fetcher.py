"""Claims jobs in batches sized to the free slots and runs each as a child task.

It claims again as soon as a slot frees or a notification arrives, and otherwise every
``poll_interval``. ``stop()`` ends claiming; running jobs then get ``shutdown_timeout`` seconds to
finish before they are cancelled (and given back without using an attempt).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import anyio

from soniq.errors import DatabaseError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from soniq.backends.base import StorageBackend
    from soniq.runtime.executor import Executor
    from soniq.types import ClaimedJob

__all__ = ["Fetcher"]

logger = logging.getLogger("soniq.worker")


class Fetcher:
    def __init__(self, backend: StorageBackend, executor: Executor, *, worker_id: str,
                 queues: Sequence[str] | None, concurrency: int, poll_interval: float,
                 shutdown_timeout: float, error_retry_delay: float, run_once: bool,
                 flush: Callable[[], Awaitable[None]]) -> None:
        self._backend = backend
        self._executor = executor
        self._worker_id = worker_id
        self._queues = list(queues) if queues is not None else None
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._shutdown_timeout = shutdown_timeout
        self._error_retry_delay = error_retry_delay
        self._run_once = run_once
        self._flush = flush
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._stopping = False
        executor.on_slot_freed = self.wake

    def wake(self) -> None:
        """Claim again now (a job was enqueued, a slot freed, or a listener reconnected)."""
        self._wake.set()

    def wake_for(self, queue: str) -> None:
        if self._queues is None or queue in self._queues:
            self._wake.set()

    def stop(self) -> None:
        """Stop claiming; running jobs finish within ``shutdown_timeout``."""
        self._stopping = True
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def free_slots(self) -> int:
        return self._concurrency - len(self._executor.running) - self._executor.stuck

    async def run(self) -> None:
        """Claim and run until stopped (or, with ``run_once``, until nothing is due)."""
        async with anyio.create_task_group() as jobs:
            while not self._stopping:
                free = self.free_slots
                if free <= 0:
                    self._wake = anyio.Event()
                    if self.free_slots <= 0:  # no await since the check: no wake-up is lost
                        await self._wait(math.inf)
                    continue
                self._wake = anyio.Event()
                claimed = await self.run_once(jobs.start_soon, free)
                if claimed is None:
                    continue
                if self._run_once and not claimed and not self._executor.running:
                    await self._flush()  # retries due now count as "due": look once more
                    if not await self.run_once(jobs.start_soon, free):
                        break
                    continue
                if len(claimed) < free:
                    await self._wait(math.inf if self._run_once else self._poll_interval)
            if self._executor.running:
                logger.info("waiting up to %gs for %d running job(s) to finish",
                            self._shutdown_timeout, len(self._executor.running))
                with anyio.move_on_after(self._shutdown_timeout):
                    while self._executor.running:
                        self._idle = anyio.Event()
                        await self._idle.wait()
            if self._executor.running:
                logger.warning("shutdown timeout: giving %d running job(s) back to the queue",
                               len(self._executor.running))
            jobs.cancel_scope.cancel()

    async def run_once(self, start: Callable[..., object], limit: int) -> list[ClaimedJob] | None:
        """Claim up to ``limit`` jobs and start them; None after a database error (logged)."""
        try:
            claimed = await self._backend.claim_jobs(self._worker_id, self._queues, limit)
        except DatabaseError as exc:
            logger.warning("claiming jobs failed, retrying in %gs: %s", self._error_retry_delay, exc)
            await self._wait(self._error_retry_delay)
            return None
        for job in claimed:
            self._executor.admit(job)
            start(self._run_job, job)
        return claimed

    async def _run_job(self, job: ClaimedJob) -> None:
        try:
            await self._executor.run(job)
        finally:
            self._wake.set()
            self._idle.set()

    async def _wait(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wake.wait()
