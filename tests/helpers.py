"""Small test utilities: wait on conditions with a deadline, never sleep-and-hope."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from soniq import Soniq, Worker


async def wait_for(predicate: Callable[[], Any | Awaitable[Any]], *, timeout: float = 10.0,
                   interval: float = 0.01, message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    try:
        with anyio.fail_after(timeout):
            while True:
                value = predicate()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await anyio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {message}") from None


async def wait_for_status(app: Soniq, job_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        record = await app.get_job(job_id)
        return dict(record) if record is not None and record["status"] in statuses else None

    result: dict[str, Any] = await wait_for(check, timeout=timeout,
                                            message=f"job {job_id} to reach {statuses}")
    return result


@asynccontextmanager
async def running_worker(app: Soniq, **options: Any) -> AsyncIterator[Worker]:
    """A worker running in a task group for the body of the block, stopped gracefully after."""
    async with anyio.create_task_group() as tg:
        worker = app.worker(**options)
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop()
