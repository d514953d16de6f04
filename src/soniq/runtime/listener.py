"""Wake-ups pushed by the database (LISTEN/NOTIFY on PostgreSQL), healing itself.

A dedicated connection listens; when it drops, the loop reconnects with exponential backoff and
claims right after every (re)connect, since notifications sent while it was away are lost. Polling
every ``poll_interval`` keeps working underneath the whole time. A ``required`` listener (the user
configured a ``listen_url``) raises when its first attempt fails: a wrong URL is an error to fix,
not a reason to poll quietly; a connection lost later heals as above.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from soniq.errors import DatabaseError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.runtime.executor import Executor
    from soniq.runtime.fetcher import Fetcher

__all__ = ["Listener"]

logger = logging.getLogger("soniq.worker")


class Listener:
    def __init__(self, backend: StorageBackend, fetcher: Fetcher, executor: Executor, *,
                 poll_interval: float, max_backoff: float = 30.0, required: bool = False) -> None:
        self._backend = backend
        self._fetcher = fetcher
        self._executor = executor
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._required = required
        self.connected = False
        self.reconnects = 0

    def on_notify(self, channel: str, payload: str) -> None:
        if channel == "soniq_jobs":
            self._fetcher.wake_for(payload)
        elif channel == "soniq_cancel":
            self._executor.request_cancel(payload)
        elif channel == "soniq_queues":  # a queue was paused, resumed or limited
            self._fetcher.settings_changed()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen forever; ``started`` once listening or once the first attempt failed (then the
        worker polls while this keeps trying, unless ``required``: then that failure is raised)."""
        backoff = 0.1
        started = False
        while True:
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(self._listen)
                    self.connected = True
                    backoff = 0.1
                    if not started:
                        task_status.started()
                        started = True
                    else:
                        self.reconnects += 1
                        logger.info("LISTEN reconnected; claiming what arrived meanwhile")
                    self._fetcher.wake()
            except* DatabaseError as group:
                self.connected = False
                if self._required and not started:
                    raise
                logger.warning("LISTEN unavailable (%s); polling every %gs, reconnecting in %.1fs",
                               group.exceptions[0], self._poll_interval, backoff)
            if not started:
                task_status.started()
                started = True
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _listen(self, *, task_status: TaskStatus[None]) -> None:
        await self._backend.listen(self.on_notify, task_status=task_status)
