"""Scenarios 3, 6, 8, 10 and 11: burn-down (N jobs pre-enqueued, one worker process, or the worker
in this process: ``embedded``), worker memory.

Burn-down clock: from the ``go`` sent to a worker that has already imported everything and opened
its connections, to the moment the database says the last job finished (Soniq ``finished_at``,
PgQueuer's ``pgqueuer_log.created``, Procrastinate's ``succeeded`` event) -- so worker start-up
(registration, LISTEN, first claim) is included and process start-up is not. A probe polls every
100 ms only to learn that the queue is drained; the poll interval does not enter the figure.

The ``features`` group runs the same burn-down for Soniq with one optional feature on; such a
system's ``surroundings`` (the silent webhook receiver) span the preload, the worker's whole life
and its stop, and its probe's extra counts (log records written, ...) join the metrics. Its
clock starts when the worker reports that it is claiming (``started``, sent once its services
are up), so it compares throughput: a feature's one-off start-up (webhooks load the HTTP stack,
~0.1 s here, a tenth of a 20,000-job run) is reported apart, as ``startup_seconds`` (every
burn-down records it).

The ``embedded`` group runs the same burn-down with the worker in this process, a task of this
event loop (for Soniq ``app.worker(concurrency=c)`` in a task group, as an application embedding
it would); the clock runs from just before the worker is started to the last finished job. The
probe's poll (one query every 100 ms) shares the loop with it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio

from benchmarks.databases import Probe
from benchmarks.machine import CpuMeter
from benchmarks.systems import load_system, surroundings
from benchmarks.workerctl import WorkerProcess

if TYPE_CHECKING:
    from pathlib import Path

    from benchmarks.databases import Target
    from benchmarks.systems import System

__all__ = ["burn_down", "embedded", "memory", "preload"]

_LOAD_CHUNK = 1_000
_MIB = 1024.0


def drain_timeout(n: int) -> float:
    """A bound on any burn-down: generous (200 jobs/s), never endless."""
    return max(60.0, n / 200.0)


async def preload(system: System, target: Target, n: int, *, first: int = 0) -> None:
    """Enqueue ``n`` no-op jobs through the system's batch API (not timed)."""
    producer = await system.open_producer(target)
    try:
        for start in range(first, first + n, _LOAD_CHUNK):
            await producer.enqueue_bulk(start, min(_LOAD_CHUNK, first + n - start))
    finally:
        await producer.aclose()


async def _wait_all_done(probe: Probe, n: int) -> int:
    """Some systems log completions a moment after the queue empties: wait (bounded) for all."""
    done = await probe.done()
    with anyio.move_on_after(10):
        while done < n:
            await anyio.sleep(0.05)
            done = await probe.done()
    return done


async def burn_down(system_name: str, target: Target, *, n: int, concurrency: int,
                    loop: str = "asyncio", profile_to: Path | None = None,
                    from_claiming: bool = False) -> dict[str, float]:
    """One burn-down. ``from_claiming`` starts the clock when the worker reports it is claiming
    instead of at ``go`` (the ``features`` group: throughput, not start-up)."""
    system = load_system(system_name)
    await system.install(target)
    async with surroundings(system, target), Probe(target, system.probe_sql(target)) as probe:
        await preload(system, target, n)
        await probe.execute("CHECKPOINT")
        async with WorkerProcess(system_name, target, concurrency=concurrency, loop=loop,
                                 profile_to=profile_to) as worker:
            rss = [worker.rss_kib()]
            go = await worker.go()
            cpu_before, meter = worker.cpu_seconds(), CpuMeter()
            drained = await probe.wait_until_drained(
                within=drain_timeout(n), on_poll=lambda: rss.append(worker.rss_kib()))
            worker_cpu, machine_busy = worker.cpu_seconds() - cpu_before, meter.busy()
            done = await _wait_all_done(probe, n)
            last = await probe.last_done()
            rss.append(worker.rss_kib())
            stopped = await worker.stop()
        counts = await probe.counts()
    if done != n:
        raise RuntimeError(f"only {done} of {n} jobs reached the finished state")
    start = worker.claiming_at if from_claiming else go
    elapsed = (last if last is not None else drained) - start
    return {**counts, "jobs_per_s": n / elapsed, "seconds": elapsed, "poll_seconds": drained - go,
            "startup_seconds": worker.claiming_at - go,
            "rss_start_mib": rss[0] / _MIB, "rss_peak_mib": max(rss) / _MIB,
            "rss_end_mib": rss[-1] / _MIB, "stop_seconds": float(stopped["stop_seconds"]),
            # How CPU-bound the worker was (% of one core) and how busy the whole box was
            # (% of all cores: worker + PostgreSQL + this process), over the poll window.
            "worker_cpu_pct": worker_cpu / (drained - go) * 100.0,
            "machine_cpu_pct": machine_busy * 100.0}


async def embedded(system_name: str, target: Target, *, n: int, concurrency: int,
                   options: dict[str, Any] | None = None) -> dict[str, float]:
    """One burn-down with the worker in this process; ``options`` go to the system's
    ``open_worker`` (PgQueuer's ``batch_size``)."""
    system = load_system(system_name)
    await system.install(target)
    async with Probe(target, system.probe_sql(target)) as probe:
        await preload(system, target, n)
        await probe.execute("CHECKPOINT")
        worker = await system.open_worker(target, concurrency, {}, **(options or {}))
        try:
            async with anyio.create_task_group() as tg:
                cpu_before, meter, go = time.process_time(), CpuMeter(), time.time()
                await tg.start(worker.run)
                drained = await probe.wait_until_drained(within=drain_timeout(n))
                cpu, machine_busy = time.process_time() - cpu_before, meter.busy()
                done = await _wait_all_done(probe, n)
                last = await probe.last_done()
                worker.stop()
        finally:
            with anyio.CancelScope(shield=True):
                await worker.aclose()
    if done != n:
        raise RuntimeError(f"only {done} of {n} jobs reached the finished state")
    elapsed = (last if last is not None else drained) - go
    return {"jobs_per_s": n / elapsed, "seconds": elapsed,
            # This whole process (worker, probe) as % of one core, and the box, over the poll.
            "worker_cpu_pct": cpu / (drained - go) * 100.0, "machine_cpu_pct": machine_busy * 100.0}


async def memory(target: Target, *, n: int, rounds: int, concurrency: int) -> dict[str, Any]:
    """Soniq worker RSS: once running and idle ("start"), then after each of ``rounds`` batches
    of ``n / rounds`` jobs; the target compares the last with the start."""
    system = load_system("soniq")
    await system.install(target)
    per_round = n // rounds
    async with Probe(target, system.probe_sql(target)) as probe, \
            WorkerProcess("soniq", target, concurrency=concurrency) as worker:
        await worker.go()
        await anyio.sleep(1.0)  # running and idle: heartbeat, LISTEN, first empty claim done
        start = worker.rss_kib()
        after: list[int] = []
        begin = time.perf_counter()
        for r in range(rounds):
            await preload(system, target, per_round, first=r * per_round)
            await probe.wait_until_drained(within=drain_timeout(per_round))
            after.append(worker.rss_kib())
        elapsed = time.perf_counter() - begin
        await worker.stop()
    return {
        "jobs": per_round * rounds,
        "rss_start_mib": start / _MIB,
        "rss_after_first_round_mib": after[0] / _MIB,
        "rss_end_mib": after[-1] / _MIB,
        "growth_pct": (after[-1] - start) / start * 100.0,
        "growth_after_first_round_pct": (after[-1] - after[0]) / after[0] * 100.0,
        "rss_rounds_mib": [a / _MIB for a in after],
        "seconds": elapsed,
    }
