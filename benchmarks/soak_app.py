"""The app that ``python -m benchmarks.soak`` runs in real ``soniq worker`` subprocesses.

Its database comes from SONIQ_DATABASE_URL. Finished rows live 30 s (``result_ttl``) and the
cleanup prunes them every 10 s, so under steady load the table holds a steady number of rows.
The producer picks a job by ``i % 100`` (:func:`job_for`):

- 93%: ``soak.quick`` -- an async job that sleeps 0-9 ms and returns a small dict;
- 5%: ``soak.flaky`` -- raises on its first attempt, succeeds on the retry (1 s later);
- 1%: ``soak.slow`` -- its first attempt outlives the job's ``timeout`` (0.2 s) and is failed by
  it, the retry (1 s later) returns at once;
- 1%: ``soak.sync`` -- a plain ``def`` (runs in a worker thread): hashes a few KiB, sleeps 2 ms;

Every job ends ``done``: dead letters are never pruned, and would grow the table by design.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import anyio

from soniq import JobContext, Soniq

__all__ = ["app", "job_for"]

RESULT_TTL = 30
CLEANUP_INTERVAL = 10.0

app = Soniq(result_ttl=RESULT_TTL, cleanup_interval=CLEANUP_INTERVAL)


class Flaky(RuntimeError):
    """What ``soak.flaky`` raises on its first attempt."""


@app.job(name="soak.quick")
async def quick(i: int, payload: str) -> dict[str, Any]:
    await anyio.sleep((i % 10) / 1000)
    return {"i": i, "size": len(payload)}


@app.job(name="soak.flaky", retries=3, retry_delay=1.0)
async def flaky(i: int, payload: str, ctx: JobContext) -> int:
    if ctx.attempt == 1:
        raise Flaky(f"job {i} fails its first attempt on purpose")
    return i


@app.job(name="soak.slow", retries=3, retry_delay=1.0, timeout=0.2)
async def slow(i: int, payload: str, ctx: JobContext) -> int:
    if ctx.attempt == 1:
        await anyio.sleep(5)  # cancelled by the job's timeout after 0.2 s
    return i


@app.job(name="soak.sync")
def sync(i: int, payload: str) -> str:
    digest = hashlib.sha256()
    for _ in range(16):
        digest.update(payload.encode())
    time.sleep(0.002)
    return digest.hexdigest()[:16]


def job_for(i: int) -> Any:
    """The job the producer enqueues as its ``i``-th (the mix of the module docstring)."""
    slot = i % 100
    if slot < 5:
        return flaky
    if slot == 5:
        return slow
    if slot == 6:
        return sync
    return quick
