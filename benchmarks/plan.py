"""What a run measures: sizes for ``--quick`` and full runs, and the ordered list of steps.

Order: measurement by measurement; inside one, run by run; inside a run, system by system -- so
slow drift on the machine hits every system alike (perf-anchors.md Part 2). Every step runs alone
against its own fresh database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks.scenarios import enqueue, latency, limits, mixed, process, workflows
from benchmarks.systems import FEATURES, LIMITED, load_system

if TYPE_CHECKING:
    from pathlib import Path

    from benchmarks.databases import Target

__all__ = ["FULL", "GROUPS", "QUICK", "Sizes", "Step", "build_plan"]

#: Connections of the claim+finish floor (bare asyncpg, systems/baseline.py) in the process group.
FLOOR_CONNECTIONS = 4
#: Selectable with --only; "peers" adds PgQueuer and Procrastinate to enqueue..latency.
GROUPS = ("enqueue", "bulk", "process", "latency", "mixed", "trio", "sqlite", "memory", "features",
          "embedded", "limits", "workflows", "peers")
#: The ``embedded`` group: worker concurrency, and the peers in it with their worker options.
EMBEDDED_CONCURRENCY = 10
EMBEDDED_PEERS: dict[str, dict[str, Any]] = {"pgqueuer": {"batch_size": 10}}
#: The ``limits`` group's queue rate limit: worker processes (each at c=100) sharing it.
RATE_WORKERS = 3

Measure = Callable[["Target", "Path | None"], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Sizes:
    runs: int
    enqueue_n: int
    bulk_n: int
    bulk_chunks: tuple[int, ...]
    process_ns: tuple[int, ...]
    concurrencies: tuple[int, ...]
    latency_samples: int
    latency_gap: float
    mixed_seconds: float
    trio_ns: tuple[int, ...]
    sqlite_enqueue_n: int
    sqlite_bulk_n: int
    sqlite_process_ns: tuple[int, ...]
    memory_n: int
    memory_rounds: int
    peer_process_n: int  # peers join the burn-down of this size only (they are slow)
    features_n: int  # burn-down with each optional feature on (webhooks, logs, encryption)
    embedded_n: int  # burn-down with the worker in this process
    limits_n: int  # burn-down of jobs limited to one running per key (1,000 keys)
    limits_rate_seconds: float  # window of the queue rate limit (3 worker processes)
    workflow_n: int  # fan-out width of the fan-in burn-down; steps of the inserted workflow
    chain_n: int  # steps of the chain (one after another)


FULL = Sizes(
    runs=3, enqueue_n=5_000, bulk_n=100_000, bulk_chunks=(1_000, 5_000),
    process_ns=(2_000, 20_000, 100_000), concurrencies=(10, 100),
    latency_samples=500, latency_gap=0.025, mixed_seconds=30.0, trio_ns=(20_000, 100_000),
    sqlite_enqueue_n=5_000, sqlite_bulk_n=100_000, sqlite_process_ns=(20_000,),
    memory_n=100_000, memory_rounds=5,
    peer_process_n=20_000, features_n=100_000, embedded_n=20_000, limits_n=100_000,
    limits_rate_seconds=10.0,
    workflow_n=10_000, chain_n=1_000,
)
QUICK = Sizes(
    runs=1, enqueue_n=1_000, bulk_n=20_000, bulk_chunks=(1_000,),
    process_ns=(5_000,), concurrencies=(10, 100),
    latency_samples=100, latency_gap=0.02, mixed_seconds=10.0, trio_ns=(5_000,),
    sqlite_enqueue_n=500, sqlite_bulk_n=10_000, sqlite_process_ns=(5_000,),
    memory_n=20_000, memory_rounds=2,
    peer_process_n=5_000, features_n=5_000, embedded_n=2_000, limits_n=10_000,
    limits_rate_seconds=3.0,
    workflow_n=1_000, chain_n=100,
)


@dataclass(frozen=True)
class Step:
    scenario: str  # enqueue | bulk | process | latency | mixed | memory | features | embedded
    system: str  # soniq | asyncpg | asyncpg+notify | pgqueuer | procrastinate | soniq+webhooks|...
    params: tuple[tuple[str, Any], ...]
    run: int
    runs: int
    measure: Measure = field(compare=False, repr=False)
    backend: str = "postgres"
    loop: str = "asyncio"
    profiled: bool = False  # a worker step: --profile attaches py-spy to it

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.scenario, self.system, self.backend, self.loop, self.params)

    @property
    def label(self) -> str:
        where = self.backend if self.loop == "asyncio" else f"{self.backend}/{self.loop}"
        args = " ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.scenario} {self.system} [{where}] {args}".strip()


def _steps(scenario: str, systems: list[str], variants: list[dict[str, Any]], runs: int,
           make: Callable[[str, dict[str, Any]], Measure], **extra: Any) -> list[Step]:
    return [
        Step(scenario, system, tuple(variant.items()), run, runs, make(system, variant), **extra)
        for variant in variants for run in range(runs) for system in systems
    ]


def _single(system: str, v: dict[str, Any]) -> Measure:
    return lambda target, _p: enqueue.single(load_system(system), target, n=v["n"])


def _bulk(system: str, v: dict[str, Any]) -> Measure:
    return lambda target, _p: enqueue.bulk(load_system(system), target, n=v["n"], chunk=v["chunk"])


def _burn(loop: str, *, from_claiming: bool = False) -> Callable[[str, dict[str, Any]], Measure]:
    def make(system: str, v: dict[str, Any]) -> Measure:
        return lambda target, profile: process.burn_down(
            system, target, n=v["n"], concurrency=v["c"], loop=loop, profile_to=profile,
            from_claiming=from_claiming)
    return make


def _latency(loop: str, gap: float) -> Callable[[str, dict[str, Any]], Measure]:
    def make(system: str, v: dict[str, Any]) -> Measure:
        return lambda target, _p: latency.latency(system, target, samples=v["samples"], gap=gap,
                                                  loop=loop)
    return make


def _embedded(system: str, v: dict[str, Any]) -> Measure:
    return lambda target, _p: process.embedded(system, target, n=v["n"], concurrency=v["c"],
                                               options=EMBEDDED_PEERS.get(system))


def _limits(s: Sizes, runs: int) -> list[Step]:
    """Run by run: the unlimited burn-down, the limited ones (concurrency limit per key; beside a
    paused, limited queue), then the queue rate limit at half of that run's unlimited jobs/s."""
    unlimited: dict[int, float] = {}
    burn = _burn("asyncio", from_claiming=True)
    variant = {"n": s.limits_n, "c": 100}
    rated = {"seconds": s.limits_rate_seconds, "workers": RATE_WORKERS, "c": 100}

    def plain(run: int) -> Measure:
        measure = burn("soniq", variant)

        async def remember(target: Target, profile: Path | None) -> dict[str, Any]:
            unlimited.pop(run, None)
            metrics = await measure(target, profile)
            unlimited[run] = metrics["jobs_per_s"]
            return metrics
        return remember

    def rate(run: int) -> Measure:
        return lambda target, _p: limits.queue_rate(
            "soniq+queue-rate", target, plain_rate=lambda: unlimited.get(run),
            seconds=rated["seconds"], workers=rated["workers"], concurrency=rated["c"])

    plan: list[Step] = []
    for run in range(runs):
        plan.append(Step("limits", "soniq", tuple(variant.items()), run, runs, plain(run),
                         profiled=True))
        plan += [Step("limits", system, tuple(variant.items()), run, runs, burn(system, variant),
                      profiled=True) for system in [*LIMITED, "soniq+held-neighbour"]]
        plan.append(Step("limits", "soniq+queue-rate", tuple(rated.items()), run, runs,
                         rate(run)))
    return plan


def build_plan(sizes: Sizes, groups: set[str], peers: list[str]) -> list[Step]:
    """Every step of a run, in order. ``peers``: the peers that are installed and wanted."""
    s, runs = sizes, sizes.runs
    peers = peers if "peers" in groups else []
    plan: list[Step] = []
    if "enqueue" in groups:
        plan += _steps("enqueue", ["soniq", "asyncpg", *peers], [{"n": s.enqueue_n}], runs,
                       _single)
    if "bulk" in groups:
        for i, chunk in enumerate(s.bulk_chunks):
            systems = ["soniq", "asyncpg", *(peers if i == 0 else [])]
            plan += _steps("bulk", systems, [{"n": s.bulk_n, "chunk": chunk}], runs, _bulk)
    if "process" in groups:
        for n in s.process_ns:
            systems = ["soniq", *(peers if n == s.peer_process_n else [])]
            plan += _steps("process", systems, [{"n": n, "c": c} for c in s.concurrencies],
                           runs, _burn("asyncio"), profiled=True)
            plan += _steps("process", ["asyncpg"], [{"n": n, "c": FLOOR_CONNECTIONS}], runs,
                           _burn("asyncio"))
    if "latency" in groups:
        # asyncpg+notify: the wake-up floor (INSERT + pg_notify, LISTEN + claim).
        plan += _steps("latency", ["soniq", "asyncpg+notify", *peers],
                       [{"samples": s.latency_samples}], runs, _latency("asyncio", s.latency_gap))
    if "mixed" in groups:
        plan += _steps("mixed", ["soniq"], [{"seconds": s.mixed_seconds}], runs,
                       lambda _sys, v: lambda target, _p: mixed.mixed(target, duration=v["seconds"]))
    if "trio" in groups:
        for n in s.trio_ns:
            plan += _steps("process", ["soniq"], [{"n": n, "c": c} for c in s.concurrencies],
                           runs, _burn("trio"), loop="trio", profiled=True)
        plan += _steps("latency", ["soniq"], [{"samples": s.latency_samples}], runs,
                       _latency("trio", s.latency_gap), loop="trio")
    if "sqlite" in groups:
        plan += _steps("enqueue", ["soniq"], [{"n": s.sqlite_enqueue_n}], runs, _single,
                       backend="sqlite")
        plan += _steps("bulk", ["soniq"], [{"n": s.sqlite_bulk_n, "chunk": s.bulk_chunks[0]}],
                       runs, _bulk, backend="sqlite")
        for n in s.sqlite_process_ns:
            plan += _steps("process", ["soniq"], [{"n": n, "c": c} for c in s.concurrencies],
                           runs, _burn("asyncio"), backend="sqlite", profiled=True)
    if "memory" in groups:
        variant = {"n": s.memory_n, "c": 100}
        plan += _steps("memory", ["soniq"], [variant], runs,
                       lambda _sys, v: lambda target, _p: process.memory(
                           target, n=v["n"], rounds=s.memory_rounds, concurrency=v["c"]))
    if "features" in groups:
        # Plain Soniq and each feature in the same runs, interleaved (own scenario name, so
        # these plain-Soniq runs are the baseline of this group only).
        plan += _steps("features", ["soniq", *FEATURES], [{"n": s.features_n, "c": 100}], runs,
                       _burn("asyncio", from_claiming=True), profiled=True)
    if "limits" in groups:
        # Unlimited Soniq and the limited variants in the same runs, interleaved (own scenario
        # name: these unlimited runs are this group's baseline).
        plan += _limits(s, runs)
    if "embedded" in groups:
        systems = ["soniq", *(p for p in peers if p in EMBEDDED_PEERS)]
        plan += _steps("embedded", systems, [{"n": s.embedded_n, "c": EMBEDDED_CONCURRENCY}], runs,
                       _embedded)
    if "workflows" in groups:
        plan += _workflows(s, runs)
    return plan


def _workflows(s: Sizes, runs: int) -> list[Step]:
    """Run by run, each shape beside the one it is divided by: the burn-downs (independent,
    then with the fan-in), the chain, the inserts (enqueue_many, then the workflows)."""
    burn = [{"shape": shape, "n": s.workflow_n, "c": 100} for shape in workflows.BURN_SHAPES]
    inserts = [{"shape": shape, "n": s.workflow_n} for shape in workflows.INSERT_SHAPES]
    plan: list[Step] = []
    for run in range(runs):
        plan += [Step("workflows", "soniq", tuple(v.items()), run, runs,
                      lambda target, profile, v=v: workflows.burn_down(
                          target, shape=v["shape"], n=v["n"], concurrency=v["c"],
                          profile_to=profile), profiled=True) for v in burn]
        chain = {"shape": "chain", "n": s.chain_n, "c": 10}
        plan.append(Step("workflows", "soniq", tuple(chain.items()), run, runs,
                         lambda target, _p: workflows.chain(target, n=s.chain_n, concurrency=10)))
        plan += [Step("workflows", "soniq", tuple(v.items()), run, runs,
                      lambda target, _p, v=v: workflows.insert(target, shape=v["shape"], n=v["n"]))
                 for v in inserts]
    return plan
