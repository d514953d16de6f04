"""Scenario 5: producers and one worker at the same time (throughput mode).

Two producer tasks in this process each call ``enqueue_many`` with 20 jobs, back to back, for
``duration`` seconds, while a worker process (concurrency 100) works; a probe samples the queue
depth every second. Sustained rate = jobs finished inside the window / window length; the rate
over the last third of the window is reported too, since a worker whose claims slow down as the
table grows (a plan that degrades) shows there first.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from benchmarks.databases import Probe
from benchmarks.stats import percentile
from benchmarks.systems import load_system
from benchmarks.workerctl import WorkerProcess

if TYPE_CHECKING:
    from benchmarks.databases import Target

__all__ = ["mixed"]

PRODUCERS = 2
BATCH = 20
CONCURRENCY = 100


async def mixed(target: Target, *, duration: float, loop: str = "asyncio") -> dict[str, float]:
    system = load_system("soniq")
    await system.install(target)
    enqueued = [0] * PRODUCERS
    depth: list[int] = []
    async with Probe(target, system.probe_sql(target)) as probe, \
            WorkerProcess("soniq", target, concurrency=CONCURRENCY, loop=loop) as worker:
        await worker.go()
        producer = await system.open_producer(target)
        try:
            begin = time.time()
            deadline = begin + duration

            async def produce(index: int) -> None:
                number = index * 100_000_000
                while time.time() < deadline:
                    await producer.enqueue_bulk(number, BATCH)
                    number += BATCH
                    enqueued[index] += BATCH

            async def sample() -> None:
                while time.time() + 1.0 < deadline:
                    await anyio.sleep(1.0)
                    depth.append(await probe.queued())

            async with anyio.create_task_group() as tg:
                for index in range(PRODUCERS):
                    tg.start_soon(produce, index)
                tg.start_soon(sample)
            end = time.time()
        finally:
            await producer.aclose()
        finished = await probe.done_before(end)
        # A worker that slows down as the table grows shows here first (the last third).
        two_thirds = begin + (end - begin) * 2 / 3
        finished_last_third = finished - await probe.done_before(two_thirds)
        backlog = await probe.queued()
        await worker.stop()
    window = end - begin
    return {
        "processed_per_s": finished / window,
        "processed_last_third_per_s": finished_last_third / (window / 3),
        "enqueued_per_s": sum(enqueued) / window,
        "depth_p50": percentile(depth, 50) if depth else float(backlog),
        "depth_max": float(max(depth, default=backlog)),
        "depth_end": float(backlog),
        "seconds": window,
    }
