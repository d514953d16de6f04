"""Scenario 13, ``workflows`` (issue #21): what jobs that wait for other jobs cost. Soniq on
PostgreSQL, through its public API (``EnqueueOptions(depends_on=...)``, ``app.workflow``).

- **fan-in burn-down** (:func:`burn_down`, shapes ``independent`` and ``fan-in``): ``n`` no-op
  jobs enqueued first (``enqueue_many``, 1,000 a call; not timed); for ``fan-in`` one more
  ``noop`` job with ``options=EnqueueOptions(depends_on=<the n ids>)``, stored ``waiting``. Then
  one worker process (c=100) as in scenario 3: the clock runs from ``go`` to the last
  ``finished_at`` (for ``fan-in``, the fan-in job's). The report divides the fan-in time by the
  same run's independent time.
- **chain** (:func:`chain`): a workflow of ``n`` ``noop`` steps, each ``after=[previous]``
  (``app.workflow``; not timed), then one worker process (c=10). Per-step overhead, from the
  database: ``started_at[k+1] - finished_at[k]`` over consecutive steps (the finish of step k
  releases step k+1 in its transaction; the worker must then claim it), p50/p99.
- **insert** (:func:`insert`, shapes ``enqueue_many``, ``workflow`` and ``workflow+fan-in``):
  ``n`` jobs in one ``enqueue_many`` call, or one ``await wf.enqueue()`` of a workflow of ``n``
  independent steps (plus, for ``workflow+fan-in``, one step ``after=`` all of them), after a
  100-job warm-up of the same kind and a CHECKPOINT; steps/s of the timed call. Building the
  workflow (``wf.add``, explicit step names) is timed apart (``build_seconds``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from benchmarks.databases import Probe, ProbeSql
from benchmarks.machine import CpuMeter
from benchmarks.scenarios.process import drain_timeout
from benchmarks.stats import summarize_ms
from benchmarks.systems import load_system
from benchmarks.workerctl import WorkerProcess

if TYPE_CHECKING:
    from pathlib import Path

    from benchmarks.databases import Target
    from soniq import Soniq

__all__ = ["BURN_SHAPES", "INSERT_SHAPES", "burn_down", "chain", "insert"]

BURN_SHAPES = ("independent", "fan-in")
INSERT_SHAPES = ("enqueue_many", "workflow", "workflow+fan-in")

#: Like Soniq's burn-down probe, but a ``waiting`` job is not finished either.
_PROBE = ProbeSql(
    remaining="SELECT EXISTS (SELECT 1 FROM soniq_jobs WHERE status = 'queued') "
              "OR EXISTS (SELECT 1 FROM soniq_jobs WHERE status = 'processing') "
              "OR EXISTS (SELECT 1 FROM soniq_jobs WHERE status = 'waiting')",
    last_done="SELECT extract(epoch FROM max(finished_at))::float8 FROM soniq_jobs "
              "WHERE status = 'done'",
    done="SELECT count(*) FROM soniq_jobs WHERE status = 'done'",
    queued="SELECT count(*) FROM soniq_jobs WHERE status = 'queued'",
)
#: Each job's number ``i`` with its start and finish (epoch seconds, the database's clock).
_TIMELINE = ("SELECT (args->>'i')::int, extract(epoch FROM started_at)::float8, "
             "extract(epoch FROM finished_at)::float8 FROM soniq_jobs ORDER BY 1")
_LOAD_CHUNK = 1_000
_WARMUP = 100
_WARMUP_BASE = 1_000_000  # warm-up job numbers


def _app(target: Target) -> Soniq:
    """The benchmark app of scenario 3 (``noop(i)``, ``stamp(i)``), for this process."""
    app: Soniq = load_system("soniq").app(target.url)  # type: ignore[attr-defined]
    return app


def _check(target: Target) -> None:
    if target.kind != "postgres":
        raise RuntimeError("the workflows group measures PostgreSQL only")


async def _install(target: Target) -> None:
    _check(target)
    await load_system("soniq").install(target)


async def _finish(probe: Probe, worker: WorkerProcess, n: int) -> tuple[float, float, float]:
    """Wait until the ``n`` jobs are done; returns (drained poll time, last ``finished_at``,
    worker CPU % of one core from ``go``), the worker stopped."""
    cpu_before, go = worker.cpu_seconds(), time.time()
    drained = await probe.wait_until_drained(within=drain_timeout(n))
    cpu = worker.cpu_seconds() - cpu_before
    done = await probe.done()
    last = await probe.last_done()
    await worker.stop()
    if done != n:
        raise RuntimeError(f"only {done} of {n} jobs reached the finished state")
    return drained, last if last is not None else drained, cpu / max(drained - go, 1e-9) * 100.0


async def burn_down(target: Target, *, shape: str, n: int, concurrency: int,
                    profile_to: Path | None = None) -> dict[str, float]:
    """``n`` independent no-op jobs, plus one job depending on all of them for ``fan-in``,
    burnt down by one worker process."""
    await _install(target)
    app = _app(target)
    try:
        ids: list[str] = []
        for first in range(0, n, _LOAD_CHUNK):
            ids += await app.enqueue_many("noop", [
                {"i": i} for i in range(first, min(first + _LOAD_CHUNK, n))])
        if shape == "fan-in":
            import soniq  # not at import time: the run snapshots src/soniq first (source.py)

            await app.enqueue("noop", i=n, options=soniq.EnqueueOptions(depends_on=ids))
    finally:
        await app.close()
    total = n + (shape == "fan-in")
    async with Probe(target, _PROBE) as probe:
        await probe.execute("CHECKPOINT")
        async with WorkerProcess("soniq", target, concurrency=concurrency,
                                 profile_to=profile_to) as worker:
            go, meter = await worker.go(), CpuMeter()
            drained, last, worker_cpu = await _finish(probe, worker, total)
            machine_busy = meter.busy()
        waited = await probe.rows(
            "SELECT extract(epoch FROM j.started_at - (SELECT max(finished_at) FROM soniq_jobs "
            f"WHERE (args->>'i')::int < {n}))::float8, "
            "extract(epoch FROM j.finished_at - j.started_at)::float8 "
            f"FROM soniq_jobs AS j WHERE (j.args->>'i')::int = {n}")
    elapsed = last - go
    result = {"jobs_per_s": total / elapsed, "seconds": elapsed, "poll_seconds": drained - go,
              "startup_seconds": worker.claiming_at - go, "worker_cpu_pct": worker_cpu,
              "machine_cpu_pct": machine_busy * 100.0}
    if shape == "fan-in" and waited:
        # From the last dependency's finish to the fan-in job's start, and its run.
        result["release_to_start_ms"] = float(waited[0][0]) * 1000.0
        result["fan_in_run_ms"] = float(waited[0][1]) * 1000.0
    return result


async def chain(target: Target, *, n: int, concurrency: int) -> dict[str, float]:
    """A workflow of ``n`` steps, each after the one before, run by one worker process."""
    await _install(target)
    app = _app(target)
    try:
        wf = app.workflow("chain")
        previous = wf.add("noop", args={"i": 0}, name="s0")
        for k in range(1, n):
            previous = wf.add("noop", args={"i": k}, name=f"s{k}", after=[previous])
        await wf.enqueue()
    finally:
        await app.close()
    async with Probe(target, _PROBE) as probe:
        await probe.execute("CHECKPOINT")
        async with WorkerProcess("soniq", target, concurrency=concurrency) as worker:
            go = await worker.go()
            _drained, last, worker_cpu = await _finish(probe, worker, n)
        timeline = await probe.rows(_TIMELINE)
    if [row[0] for row in timeline] != list(range(n)):
        raise RuntimeError("the chain's steps are not the jobs 0..n-1")
    gaps = [timeline[k + 1][1] - timeline[k][2] for k in range(n - 1)]
    runs = [finished - started for _i, started, finished in timeline]
    elapsed = last - go
    return {**summarize_ms(gaps), "jobs_per_s": n / elapsed, "seconds": elapsed,
            "chain_seconds": timeline[-1][2] - timeline[0][1],
            "step_run_p50_ms": summarize_ms(runs)["p50_ms"], "worker_cpu_pct": worker_cpu}


def _workflow(app: Soniq, first: int, n: int, *, fan_in: bool) -> tuple[Any, int]:
    """A workflow of ``n`` independent ``noop`` steps (and one after all of them for
    ``fan_in``), explicitly named; returns it and its number of steps."""
    wf = app.workflow("insert")
    steps = [wf.add("noop", args={"i": i}, name=f"s{i}") for i in range(first, first + n)]
    if fan_in:
        wf.add("noop", args={"i": first + n}, name="fan-in", after=steps)
    return wf, n + fan_in


async def insert(target: Target, *, shape: str, n: int) -> dict[str, float]:
    """One timed call writing ``n`` jobs: ``enqueue_many``, or ``wf.enqueue()``."""
    await _install(target)
    app = _app(target)
    try:
        await app.ensure_initialized()
        fan_in = shape == "workflow+fan-in"
        if shape == "enqueue_many":
            await app.enqueue_many("noop", [{"i": _WARMUP_BASE + i} for i in range(_WARMUP)])
        else:
            warm, _ = _workflow(app, _WARMUP_BASE, _WARMUP, fan_in=fan_in)
            await warm.enqueue()
        async with Probe(target, _PROBE) as probe:
            await probe.execute("CHECKPOINT")
        build = time.perf_counter()
        if shape == "enqueue_many":
            args_list = [{"i": i} for i in range(n)]
            steps = n
        else:
            wf, steps = _workflow(app, 0, n, fan_in=fan_in)
        begin = time.perf_counter()
        if shape == "enqueue_many":
            await app.enqueue_many("noop", args_list)
        else:
            await wf.enqueue()
        elapsed = time.perf_counter() - begin
    finally:
        await app.close()
    return {"jobs_per_s": steps / elapsed, "seconds": elapsed, "steps": float(steps),
            "build_seconds": begin - build}
