"""Scenarios 1 and 2: enqueue one job per call (sequential), and bulk enqueue in chunks.

Method as in perf-anchors.md Part 2: warm up (50 calls / one 100-job batch), CHECKPOINT, then
time the calls back to back from one task in this process.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from benchmarks.databases import Probe
from benchmarks.stats import summarize_ms

if TYPE_CHECKING:
    from benchmarks.databases import Target
    from benchmarks.systems import System

__all__ = ["bulk", "single"]

_WARMUP_CALLS = 50
_WARMUP_BATCH = 100


async def single(system: System, target: Target, *, n: int) -> dict[str, float]:
    """``n`` sequential one-job enqueues: jobs/s and the per-call latency distribution."""
    await system.install(target)
    producer = await system.open_producer(target)
    try:
        for i in range(_WARMUP_CALLS):
            await producer.enqueue_one(i)
        async with Probe(target, system.probe_sql(target)) as probe:
            await probe.execute("CHECKPOINT")
        calls: list[float] = []
        begin = time.perf_counter()
        for i in range(_WARMUP_CALLS, _WARMUP_CALLS + n):
            call_start = time.perf_counter()
            await producer.enqueue_one(i)
            calls.append(time.perf_counter() - call_start)
        elapsed = time.perf_counter() - begin
    finally:
        await producer.aclose()
    per_call = summarize_ms(calls)
    return {"jobs_per_s": n / elapsed, "seconds": elapsed,
            "call_p50_ms": per_call["p50_ms"], "call_p99_ms": per_call["p99_ms"]}


async def bulk(system: System, target: Target, *, n: int, chunk: int) -> dict[str, float]:
    """``n`` jobs through the batch API, ``chunk`` per call."""
    await system.install(target)
    producer = await system.open_producer(target)
    try:
        await producer.enqueue_bulk(0, _WARMUP_BATCH)
        async with Probe(target, system.probe_sql(target)) as probe:
            await probe.execute("CHECKPOINT")
        calls = 0
        begin = time.perf_counter()
        for first in range(_WARMUP_BATCH, _WARMUP_BATCH + n, chunk):
            await producer.enqueue_bulk(first, min(chunk, _WARMUP_BATCH + n - first))
            calls += 1
        elapsed = time.perf_counter() - begin
    finally:
        await producer.aclose()
    return {"jobs_per_s": n / elapsed, "seconds": elapsed, "call_ms": elapsed / calls * 1000}
