"""``benchmarks.plan``: which systems the latency, embedded and limits groups run (no bench runs)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from benchmarks.databases import Target
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


def test_limits_runs_the_unlimited_burn_down_first_in_every_run() -> None:
    plan = build_plan(replace(QUICK, runs=2), {"limits"}, [])
    order = ["soniq", "soniq+limit-rr", "soniq+limit-grouped", "soniq+held-neighbour",
             "soniq+queue-rate"]
    assert [(s.run, s.system) for s in plan] == [(r, name) for r in range(2) for name in order]
    rated = plan[4]
    assert dict(rated.params) == {"seconds": QUICK.limits_rate_seconds, "workers": 3, "c": 100}
    assert not rated.profiled


@pytest.mark.anyio
async def test_the_queue_rate_step_refuses_to_run_without_the_same_runs_unlimited() -> None:
    rated = next(s for s in build_plan(QUICK, {"limits"}, []) if s.system == "soniq+queue-rate")
    with pytest.raises(RuntimeError, match="no unlimited burn-down of this run"):
        await rated.measure(Target("postgres", "postgresql://unused"), None)
