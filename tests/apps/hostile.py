"""Jobs that fight the worker, for ``soniq worker`` subprocesses (tests/reliability/
test_hostile_jobs.py). Its database comes from SONIQ_DATABASE_URL."""

from __future__ import annotations

import sys
import time

import anyio

from soniq import Soniq

app = Soniq()


@app.job(name="exits", retries=1)
async def exits() -> None:
    sys.exit(3)


@app.job(name="interrupted", retries=0)
async def interrupted() -> None:
    raise KeyboardInterrupt


@app.job(name="exits_in_thread", retries=0)
def exits_in_thread() -> None:
    sys.exit(4)


@app.job(name="naps")
async def naps(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "rested"


@app.job(name="spins_in_thread", retries=0, timeout=1)
def spins_in_thread() -> None:
    """Times out after 1 s, but its thread cannot be stopped: it runs until the process ends."""
    while True:
        time.sleep(0.5)


@app.job(name="blocks_in_thread", timeout=0)
def blocks_in_thread() -> None:
    while True:
        time.sleep(0.5)


#: Printed once the job runs (a claimed job is ``processing`` before its code starts: a signal
#: then would cancel it before it could ignore anything).
IGNORING = "ignores_cancellation: running, ignoring cancellation from now on"


@app.job(name="ignores_cancellation")
async def ignores_cancellation() -> None:
    print(IGNORING, file=sys.stderr, flush=True)
    while True:
        try:
            await anyio.sleep(0.1)
        except anyio.get_cancelled_exc_class():
            pass
