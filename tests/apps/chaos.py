"""An app for worker subprocess tests. Its database comes from SONIQ_DATABASE_URL; every job
appends ``job_id attempt pid event`` lines to the file named by SONIQ_TEST_LEDGER (small appends
are atomic, and the file survives the worker being killed)."""

from __future__ import annotations

import os
import signal

import anyio

from soniq import JobContext, Soniq

app = Soniq()


def record(ctx: JobContext, event: str) -> None:
    with open(os.environ["SONIQ_TEST_LEDGER"], "a") as ledger:
        ledger.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()} {event}\n")


@app.job(name="sleep")
async def sleep(seconds: float, ctx: JobContext) -> str:
    record(ctx, "start")
    await anyio.sleep(seconds)
    record(ctx, "finish")
    return "slept"


@app.job(name="noop")
async def noop(ctx: JobContext) -> None:
    record(ctx, "start")
    record(ctx, "finish")


@app.job(name="nap")
async def nap(ctx: JobContext) -> None:
    record(ctx, "start")
    await anyio.sleep(0.005)  # long enough that racing workers all get a share
    record(ctx, "finish")


@app.job(name="suicide", retries=2)
async def suicide(ctx: JobContext) -> None:
    record(ctx, "start")
    os.kill(os.getpid(), signal.SIGKILL)
