"""Keeps the worker's row alive every ``heartbeat_interval`` and picks up cancel requests for its
running jobs (the polling path; PostgreSQL also pushes them through LISTEN)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from soniq.errors import DatabaseError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.runtime.executor import Executor
    from soniq.types import WorkerInfo

__all__ = ["Heartbeat"]

logger = logging.getLogger("soniq.worker")


class Heartbeat:
    def __init__(self, backend: StorageBackend, executor: Executor, worker: WorkerInfo, *,
                 interval: float) -> None:
        self._backend = backend
        self._executor = executor
        self._worker = worker
        self._interval = interval

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Register the worker (so it exists before anything is claimed), then beat."""
        await self._backend.register_worker(self._worker)
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            await self.tick()

    async def tick(self) -> None:
        try:
            cancels = await self._backend.heartbeat(self._worker.id)
        except DatabaseError as exc:
            logger.warning("heartbeat failed (will retry in %gs): %s", self._interval, exc)
            return
        for job_id in cancels:
            self._executor.request_cancel(job_id)
