"""The benchmarks' ``workflows`` group: its plan and its rows of the targets table, on synthetic
records (no bench runs)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from benchmarks.plan import FULL, QUICK, build_plan
from benchmarks.report import markdown


def _record(metrics: dict[str, Any], scenario: str = "workflows", **params: Any) -> dict[str, Any]:
    return {"scenario": scenario, "system": "soniq", "backend": "postgres", "loop": "asyncio",
            "params": params, "run": 1, "metrics": metrics, "error": None, "others_pct": 0.0}


_META = {
    "machine": {"nproc": 2, "cpu": "cpu", "memory_gib": 4, "kernel": "6", "python": "3.11"},
    "postgres": {"version": "PostgreSQL 16", "shared_buffers": "128MB",
                 "synchronous_commit": "on", "fsync": "on"},
    "versions": {"soniq": "0", "asyncpg": "0"}, "git": "abc", "started": "now", "mode": "quick",
    "runs": 1, "loadavg_start": 0, "loadavg_end": 0, "seconds": 60, "peers_wanted": False,
}


def _row(text: str, starts: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(starts))


def test_the_issue_sizes_in_full_runs_and_small_ones_in_quick() -> None:
    assert (FULL.workflow_n, FULL.chain_n) == (10_000, 1_000)
    assert (QUICK.workflow_n, QUICK.chain_n) == (1_000, 100)


def test_every_run_measures_each_shape_beside_what_it_is_divided_by() -> None:
    plan = build_plan(replace(QUICK, runs=2), {"workflows"}, [])
    shapes = ["independent", "fan-in", "chain", "enqueue_many", "workflow", "workflow+fan-in"]
    assert [(s.run, dict(s.params)["shape"]) for s in plan] == [
        (run, shape) for run in range(2) for shape in shapes]
    assert {s.scenario for s in plan} == {"workflows"} and {s.system for s in plan} == {"soniq"}
    assert [s.profiled for s in plan[:3]] == [True, True, False]  # --profile: the burn-downs
    assert dict(plan[2].params) == {"shape": "chain", "n": QUICK.chain_n, "c": 10}


def test_fan_in_row_divides_by_the_independent_burn_down() -> None:
    text = markdown(_META, [
        _record({"jobs_per_s": 5_000.0, "seconds": 2.0}, shape="independent", n=10_000, c=100),
        _record({"jobs_per_s": 4_000.0, "seconds": 2.5, "release_to_start_ms": 3.0},
                shape="fan-in", n=10_000, c=100),
    ])
    row = _row(text, "| 13 workflows, 10,000-wide fan-out")
    assert "2.500 s = **1.25×** the 10,000 independent jobs' 2.000 s" in row
    assert row.endswith("| ≤ 1.3× the same jobs without the fan-in | ✅ met |")


def test_chain_row_is_a_multiple_of_the_latency_p50_only_when_latency_ran() -> None:
    chain = _record({"jobs_per_s": 200.0, "p50_ms": 5.0, "p99_ms": 9.0, "max_ms": 12.0},
                    shape="chain", n=1_000, c=10)
    alone = _row(markdown(_META, [chain]), "| 13 workflows, chain")
    assert "p50 **5.00 ms**, p99 9.00 ms" in alone and "latency scenario" not in alone
    assert alone.endswith("| — |")
    latency = _record({"p50_ms": 2.0, "p99_ms": 4.0, "max_ms": 5.0}, "latency", samples=500)
    both = _row(markdown(_META, [latency, chain]), "| 13 workflows, chain")
    assert "= **2.50×** the latency scenario's p50 (2.00 ms)" in both
    assert both.endswith("| ❌ missed |")


def test_insert_rows_are_a_share_of_enqueue_many() -> None:
    text = markdown(_META, [
        _record({"jobs_per_s": 40_000.0}, shape="enqueue_many", n=10_000),
        _record({"jobs_per_s": 30_000.0}, shape="workflow", n=10_000),
        _record({"jobs_per_s": 10_000.0}, shape="workflow+fan-in", n=10_000),
    ])
    plain = _row(text, "| 13 workflows, insert: `await wf.enqueue()` of 10,000 independent steps (")
    assert "**75%** of `enqueue_many` of 10,000 jobs in one call (40,000 jobs/s)" in plain
    assert plain.endswith("| ✅ met |")
    assert _row(text, "| 13 workflows, insert: `await wf.enqueue()` of 10,000 independent steps +"
                ).endswith("| ❌ missed |")
