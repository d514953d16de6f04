"""``benchmarks.plan``: which systems the latency and embedded groups run (no bench runs)."""

from __future__ import annotations

from benchmarks.plan import QUICK, build_plan


def _systems(groups: set[str], peers: list[str], scenario: str) -> list[str]:
    return [step.system for step in build_plan(QUICK, groups, peers) if step.scenario == scenario]


def test_latency_runs_the_wake_up_floor_beside_soniq() -> None:
    assert _systems({"latency"}, [], "latency") == ["soniq", "asyncpg+notify"]


def test_embedded_runs_soniq_and_only_pgqueuer_of_the_peers() -> None:
    both = ["pgqueuer", "procrastinate"]
    assert _systems({"embedded", "peers"}, both, "embedded") == ["soniq", "pgqueuer"]
    assert _systems({"embedded"}, both, "embedded") == ["soniq"]  # peers not asked for
    step = build_plan(QUICK, {"embedded"}, [])[0]
    assert dict(step.params) == {"n": QUICK.embedded_n, "c": 10}
