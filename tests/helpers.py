"""Small test utilities: wait on conditions with a deadline, never sleep-and-hope."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import asyncpg

from soniq import Soniq, Worker
from soniq.backends import _bridge


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


def running_worker(app: Soniq, **options: Any) -> AbstractAsyncContextManager[Worker]:
    """A worker running in a task group for the body of the block, stopped gracefully after
    (the public ``app.running_worker``; kept so existing tests read the same)."""
    return app.running_worker(**options)


async def on_connection(url: str, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``fn(conn)`` on a fresh connection to ``url``, from asyncio or trio."""

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return await _bridge.call(run)
