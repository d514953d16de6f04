"""Scenarios 4 and 6: enqueue-to-start latency against an idle worker in another process.

The worker waits idle (so the wake-up is a NOTIFY, not a poll). This process takes
``time.time()``, enqueues one ``stamp(i)`` job and sleeps ``gap`` seconds before the next; the job
records ``time.time()`` as its first act. Latency = stamp - time before the enqueue call (same
machine, same clock), so it includes the enqueue round trip, as perf-anchors.md Part 2 did.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from benchmarks.databases import Probe
from benchmarks.stats import summarize_ms
from benchmarks.systems import load_system
from benchmarks.workerctl import WorkerProcess

if TYPE_CHECKING:
    from benchmarks.databases import Target

__all__ = ["latency"]

_WARMUP = 5
_WARMUP_BASE = 1_000_000  # warm-up job numbers, kept out of the sample
_CONCURRENCY = 10


async def latency(system_name: str, target: Target, *, samples: int, gap: float,
                  loop: str = "asyncio") -> dict[str, float]:
    system = load_system(system_name)
    await system.install(target)
    sent: dict[int, float] = {}
    async with Probe(target, system.probe_sql(target)) as probe, \
            WorkerProcess(system_name, target, concurrency=_CONCURRENCY, loop=loop) as worker:
        await worker.go()
        await anyio.sleep(1.0)  # idle, listening
        producer = await system.open_producer(target)
        try:
            for k in range(_WARMUP):
                await producer.enqueue_one(_WARMUP_BASE + k, "stamp")
                await anyio.sleep(gap)
            for i in range(samples):
                sent[i] = time.time()
                await producer.enqueue_one(i, "stamp")
                await anyio.sleep(gap)
        finally:
            await producer.aclose()
        await probe.wait_until_drained(timeout=60)
        stamps = (await worker.stop())["stamps"]
    latencies = [stamps[i] - sent[i] for i in sent if i in stamps]
    if not latencies:
        raise RuntimeError("no latency sample arrived")
    return {**summarize_ms(latencies), "missed": float(samples - len(latencies)),
            "samples": float(len(latencies))}
