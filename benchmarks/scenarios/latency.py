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

#: Where the database can say more: for each sampled job, when its INSERT began and when the
#: claim that took it began (both transaction start times, epoch seconds), splitting latency into
#: enqueue -> claim (commit, NOTIFY, wake-up) and claim -> start (claim round trips, dispatch).
_SONIQ_TIMELINE = ("SELECT (args->>'i')::int, extract(epoch FROM created_at)::float8, "
                   "extract(epoch FROM started_at)::float8 FROM soniq_jobs WHERE job_name = 'stamp'")
_TIMELINE = {"soniq": _SONIQ_TIMELINE, "asyncpg+notify": _SONIQ_TIMELINE}
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
        await probe.wait_until_drained(within=60)
        stamps = (await worker.stop())["stamps"]
        timeline = await probe.rows(_TIMELINE[system_name]) if system_name in _TIMELINE else []
    latencies = [stamps[i] - sent[i] for i in sent if i in stamps]
    if not latencies:
        raise RuntimeError("no latency sample arrived")
    result = {**summarize_ms(latencies), "missed": float(samples - len(latencies)),
              "samples": float(len(latencies))}
    claims = {i: (created, claimed) for i, created, claimed in timeline
              if i in stamps and i in sent}
    if claims:
        result["to_claim_p50_ms"] = summarize_ms([claims[i][1] - sent[i] for i in claims])["p50_ms"]
        result["claim_to_start_p50_ms"] = summarize_ms(
            [stamps[i] - claims[i][1] for i in claims])["p50_ms"]
        result["insert_begins_p50_ms"] = summarize_ms(
            [claims[i][0] - sent[i] for i in claims])["p50_ms"]
    return result
