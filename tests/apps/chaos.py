"""The app that reliability tests run in real ``soniq worker`` subprocesses.

Its queue database comes from SONIQ_DATABASE_URL. Every job writes ``start`` and ``finish`` rows
(job id, attempt, lease, pid) to the ledger table ``chaos_ledger`` at SONIQ_TEST_LEDGER_URL,
over connections of its own in autocommit, so the rows survive the worker being killed and the
queue's database being restarted (tests/reliability/ledger.py reads them).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import asyncpg

from soniq import JobContext, RateLimited, Soniq
from soniq.backends._bridge import call

app = Soniq()

LEDGER_TABLE = "chaos_ledger"
_INSERT = (f"INSERT INTO {LEDGER_TABLE} (job_id, attempt, lease_id, pid, event) "
           "VALUES ($1, $2, $3, $4, $5)")
_pool: Any = None
_pool_lock = anyio.Lock()


async def _ledger() -> Any:
    global _pool
    async with _pool_lock:
        if _pool is None:
            _pool = await call(asyncpg.create_pool, os.environ["SONIQ_TEST_LEDGER_URL"],
                               min_size=1, max_size=2)
    return _pool


async def record(ctx: JobContext, event: str) -> None:
    pool = await _ledger()
    await call(pool.execute, _INSERT, ctx.job_id, ctx.attempt, ctx.lease_id, os.getpid(), event)


async def recorded(ctx: JobContext, event: str) -> bool:
    """Whether the ledger has an ``event`` row of this job (from any run)."""
    pool = await _ledger()
    return bool(await call(pool.fetchval, f"SELECT count(*) FROM {LEDGER_TABLE} "
                           "WHERE job_id = $1 AND event = $2", ctx.job_id, event))


@app.job(name="sleep")
async def sleep(seconds: float, ctx: JobContext) -> str:
    await record(ctx, "start")
    await anyio.sleep(seconds)
    await record(ctx, "finish")
    return "slept"


@app.job(name="noop")
async def noop(ctx: JobContext) -> None:
    await record(ctx, "start")
    await record(ctx, "finish")


@app.job(name="nap")
async def nap(ctx: JobContext, ms: float = 5) -> None:
    """Long enough that racing workers all get a share."""
    await record(ctx, "start")
    await anyio.sleep(ms / 1000)
    await record(ctx, "finish")


@app.job(name="suicide", retries=2)
async def suicide(ctx: JobContext) -> None:
    await record(ctx, "start")
    os.kill(os.getpid(), signal.SIGKILL)


@app.job(name="limited_nap", concurrency_limit=2, concurrency_key="key")
async def limited_nap(ctx: JobContext, key: str, ms: float = 20) -> None:
    """At most two running per key, across every worker."""
    await record(ctx, "start")
    await anyio.sleep(ms / 1000)
    await record(ctx, "finish")


@app.job(name="ordered_step", ordered=True, concurrency_key="key", retries=2)
async def ordered_step(ctx: JobContext, key: str, i: int, fail_first: bool = False,
                       kill_first: bool = False) -> None:
    """One at a time per key, in enqueue order; the first attempt may fail or kill its worker."""
    await record(ctx, "start")
    await anyio.sleep(0.005)
    if ctx.attempt == 1 and kill_first:
        os.kill(os.getpid(), signal.SIGKILL)
    if ctx.attempt == 1 and fail_first:
        raise RuntimeError(f"step {i} of {key} fails once")
    await record(ctx, "finish")


@app.job(name="rated_nap", rate_limit="20/s", rate_key="key")
async def rated_nap(ctx: JobContext, key: str, ms: float = 5, throttle: bool = False) -> None:
    """At most 20 starts per second per key, across every worker; with ``throttle`` the first
    run raises ``RateLimited(retry_after=1)`` (an HTTP 429), which holds the key everywhere."""
    await record(ctx, "start")
    if throttle and not await recorded(ctx, "throttled"):
        await record(ctx, "throttled")
        raise RateLimited(retry_after=1)
    await anyio.sleep(ms / 1000)
    await record(ctx, "finish")


@app.job(name="step", retries=2)
async def step(ctx: JobContext, kill_first: bool = False) -> int:
    """A workflow step; with ``kill_first`` its first attempt kills its worker mid-run."""
    await record(ctx, "start")
    await anyio.sleep(0.005)
    if ctx.attempt == 1 and kill_first:
        os.kill(os.getpid(), signal.SIGKILL)
    await record(ctx, "finish")
    return len(ctx.dependency_results)
