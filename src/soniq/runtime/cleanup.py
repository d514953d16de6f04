"""Crash recovery and retention, once per ``cleanup_interval`` across all workers.

Each round, one worker (whichever claims the round in storage) re-queues the jobs of workers silent
for ``heartbeat_timeout`` — the attempt stays used, so a job that kills its worker every time ends
in the dead-letter state instead of looping — and deletes finished jobs past ``result_ttl``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from soniq.errors import DatabaseError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend

__all__ = ["Cleanup"]

logger = logging.getLogger("soniq.worker")


class Cleanup:
    def __init__(self, backend: StorageBackend, *, interval: float, stale_after: float,
                 error_retry_delay: float) -> None:
        self._backend = backend
        self._interval = interval
        self._stale_after = stale_after
        self._error_retry_delay = error_retry_delay

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.run_once()
            except DatabaseError as exc:
                logger.warning("cleanup failed, retrying in %gs: %s", self._error_retry_delay, exc)
                await anyio.sleep(self._error_retry_delay)
                continue
            await anyio.sleep(self._interval)

    async def run_once(self) -> tuple[list[str], int] | None:
        """Rescue and prune if this worker leads this round: (rescued ids, pruned count)."""
        if not await self._backend.claim_maintenance("cleanup", self._interval):
            return None
        rescued = await self._backend.rescue_jobs(self._stale_after)
        if rescued:
            logger.warning("rescued %d job(s) from silent workers: %s", len(rescued),
                           ", ".join(rescued))
        pruned = await self._backend.prune_jobs()
        if pruned:
            logger.debug("pruned %d finished job(s) past result_ttl", pruned)
        return rescued, pruned
