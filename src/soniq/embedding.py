"""The app's workers: :class:`AppWorker` (what ``app.worker()`` returns) and embedding one in an
application's own event loop: ``async with app.running_worker():``.


The worker runs as a task in a task group that lives exactly as long as the ``async with`` body:
the block is entered once the worker can claim (``task_status.started``), and leaving it normally
stops claiming and lets the running jobs finish (up to ``shutdown_timeout``; the rest go back to
the queue without using an attempt). An exception or cancellation in the body cancels the worker
at once, so its jobs are given back. It works the same on asyncio and trio, installs no signal
handlers, and never calls ``asyncio.create_task`` (DESIGN.md §5).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from soniq.errors import ConfigurationError
from soniq.runtime import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from anyio.abc import TaskStatus

    from soniq.producer import Producer
    from soniq.registry import JobRegistry
    from soniq.settings import SoniqSettings

__all__ = ["AppWorker", "running"]

#: Connections of the main pool a worker's services hold at once (scheduler, webhook delivery, log
#: writes). On PostgreSQL claims, finishes and heartbeats use a small pool of their own, and LISTEN
#: a dedicated connection.
WORKER_CONNECTIONS = 3


class AppWorker(Worker):
    """A worker of an app: checks the pool and the encryption keys before it starts, and is one of
    the producer's ``workers`` while it runs, so this process's enqueues wake it at once."""

    def __init__(self, producer: Producer, ready: Callable[[], Awaitable[None]], *,
                 registry: JobRegistry, settings: SoniqSettings, **kwargs: Any) -> None:
        super().__init__(registry=registry, settings=settings, codec=producer.codec, **kwargs)
        self._producer = producer
        self._ready = ready
        self._codec = producer.codec
        self._registry = registry
        self._settings = settings

    async def run(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        settings, needed = self._settings, WORKER_CONNECTIONS + self._settings.pool_headroom
        if self._backend.supports_transactions and settings.pool_max_size < needed:
            raise ConfigurationError(
                f"pool_max_size={settings.pool_max_size} is too small for a worker: it uses "
                f"{WORKER_CONNECTIONS} connections plus pool_headroom={settings.pool_headroom}; "
                f"set pool_max_size >= {needed}"
            )
        if any(spec.encrypt for spec in self._registry):
            self._producer.signing()  # no keys: refuse to start rather than dead-letter jobs
            if self._codec is not self._producer.codec:  # it would store encrypted results plainly
                raise ConfigurationError(
                    "an encrypt=True job was registered after this worker was created; register "
                    "every job before calling app.worker()"
                )
        await self._ready()
        self._producer.workers.add(self)
        try:
            await super().run(task_status=task_status)
        finally:
            self._producer.workers.discard(self)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` in a task group for the body of the block; stop it gracefully after.

    An exception from the body comes out as itself, not wrapped in an ``ExceptionGroup``.
    """
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            try:
                yield worker
            except BaseException as exc:
                failure = exc
                worker.cancel()  # the body failed or was cancelled: give running jobs back now
                raise
            worker.stop()  # normal exit: claim nothing more, let running jobs finish
    except BaseExceptionGroup as group:
        if failure is not None and len(group.exceptions) == 1 and group.exceptions[0] is failure:
            raise failure from None
        raise
