"""Embedding a worker in an application's own event loop: ``async with app.running_worker():``.

The worker runs as a task in a task group that lives exactly as long as the ``async with`` body:
the block is entered once the worker can claim (``task_status.started``), and leaving it normally
stops claiming and lets the running jobs finish (up to ``shutdown_timeout``; the rest go back to
the queue without using an attempt). An exception or cancellation in the body cancels the worker
at once, so its jobs are given back. It works the same on asyncio and trio, installs no signal
handlers, and never calls ``asyncio.create_task`` (DESIGN.md §5).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from soniq.runtime import Worker

__all__ = ["running"]


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
