"""Scenario 12's queue rate limit: does a queue start jobs at the rate it was given?

``app.queues.set_rate_limit("default", f"{rate}/s")``, where ``rate`` is half of the unlimited
burn-down's jobs/s measured earlier in the same run of the ``limits`` group (``plain_rate``), then
**three worker processes** (c=100 each) claim from a backlog large enough never to drain, for
``seconds`` plus a margin. Every start is read afterwards from the rows' ``started_at`` (the
database's clock, the one the bucket uses). The window is ``seconds`` long from the first start.

A bucket starts full (``rate`` tokens, one second's worth) and refills at ``rate``/s, so over the
window at most ``rate × seconds + rate`` jobs can start. The achieved rate is therefore
``(starts in the window − rate) / seconds``: the burst taken out exactly, whenever it is spent
(a worker that is slow to spend it shows as a shortfall, not as a faster second). Beside it, the
rate over the window's second half (the burst is long spent there) and the per-second counts.
"""

from __future__ import annotations

import bisect
import math
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, cast

import anyio

from benchmarks.databases import Probe
from benchmarks.machine import CpuMeter
from benchmarks.scenarios.process import preload
from benchmarks.systems import load_system
from benchmarks.workerctl import WorkerProcess

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.databases import Target
    from benchmarks.systems.soniq_system import SoniqSystem

__all__ = ["queue_rate"]

#: Seconds the workers run after the window, so the window is never cut by their stop.
_MARGIN = 2.0
_QUEUE = "default"
_STARTS = ("SELECT extract(epoch FROM started_at)::float8 FROM soniq_jobs "
           "WHERE started_at IS NOT NULL ORDER BY 1")


async def queue_rate(system_name: str, target: Target, *, plain_rate: Callable[[], float | None],
                     seconds: float, workers: int, concurrency: int) -> dict[str, float]:
    """One measurement (see the module docstring)."""
    unlimited = plain_rate()
    if not unlimited:
        raise RuntimeError("no unlimited burn-down of this run to take the rate from "
                           "(it must run, and succeed, first)")
    rate = max(1, int(unlimited / 2))
    system = load_system(system_name)
    await system.install(target)
    # Starts can reach rate × (seconds + margin + the workers' start-up) + the burst: twice that.
    backlog = math.ceil(rate * (seconds + _MARGIN + 3.0) * 2)
    async with Probe(target, system.probe_sql(target)) as probe:
        await preload(system, target, backlog)
        await probe.execute("CHECKPOINT")
        async with AsyncExitStack() as stack:
            procs = [await stack.enter_async_context(
                WorkerProcess(system_name, target, concurrency=concurrency))
                for _ in range(workers)]
            # Set last, once every worker is ready: the bucket is full (one second's tokens)
            # from here until the first claim, whenever that comes.
            app = cast("SoniqSystem", system).app(target.url)
            try:
                await app.queues.set_rate_limit(_QUEUE, f"{rate}/s", actor="benchmarks")
            finally:
                await app.close()
            cpu_before, meter = sum(p.cpu_seconds() for p in procs), CpuMeter()
            for proc in procs:
                await proc.go()
            await anyio.sleep(seconds + _MARGIN)
            worker_cpu, machine_busy = sum(p.cpu_seconds() for p in procs) - cpu_before, meter.busy()
            left = await probe.queued()
            for proc in procs:
                await proc.stop()
        starts = [float(row[0]) for row in await probe.rows(_STARTS)]
    if left == 0:
        raise RuntimeError(f"the backlog of {backlog:,} drained: the window measured no limit")
    first = starts[0]
    end = first + seconds
    if starts[-1] < end:
        raise RuntimeError(f"the last start came {starts[-1] - first:.2f} s after the first, "
                           f"before the {seconds} s window ended")
    in_window = bisect.bisect_left(starts, end)
    half = in_window - bisect.bisect_left(starts, first + seconds / 2)
    per_second = [bisect.bisect_left(starts, first + s + 1) - bisect.bisect_left(starts, first + s)
                  for s in range(int(seconds))]
    achieved = (in_window - rate) / seconds
    steady = per_second[1:] or per_second
    return {
        "rate_set": float(rate), "unlimited_jobs_per_s": unlimited,
        "jobs_per_s": achieved, "achieved_pct": achieved / rate * 100.0,
        "second_half_per_s": half / (seconds / 2),
        "starts_in_window": float(in_window), "first_second_starts": float(per_second[0]),
        "per_second_min": float(min(steady)), "per_second_max": float(max(steady)),
        "backlog": float(backlog), "queued_left": float(left), "seconds": seconds,
        # The three workers together, as % of one core; and the box.
        "worker_cpu_pct": worker_cpu / (seconds + _MARGIN) * 100.0,
        "machine_cpu_pct": machine_busy * 100.0,
    }
