"""``benchmarks.compare``: statistics, verdicts and tables on synthetic records (no bench runs)."""

from __future__ import annotations

from typing import Any

import pytest
from benchmarks.compare import AA1, AA2, NEW, OLD, _schedule, collect, compare_row, markdown


def _record(scenario: str, metrics: dict[str, Any], system: str = "soniq",
            error: str | None = None, **params: Any) -> dict[str, Any]:
    return {"scenario": scenario, "system": system, "backend": "postgres", "loop": "asyncio",
            "params": params, "run": 1, "metrics": metrics, "error": error, "others_pct": 0.0}


def _process(rate: float, cpu_pct: float = 80.0, **kw: Any) -> dict[str, Any]:
    return _record("process", {"jobs_per_s": rate, "seconds": 5_000 / rate,
                               "worker_cpu_pct": cpu_pct}, n=5_000, c=100, **kw)


def test_schedule_runs_aa_first_then_alternates_ab() -> None:
    assert _schedule(3, 2) == [AA1, AA2, AA2, AA1, OLD, NEW, NEW, OLD, OLD, NEW]


def test_within_noise_below_three_percent_even_with_quiet_aa() -> None:
    row = compare_row({OLD: [100.0], NEW: [102.0], AA1: [100.0], AA2: [100.0]}, higher=True)
    assert row is not None
    assert row.diff_pct == pytest.approx(2.0)
    assert row.aa_pct == 0.0
    assert row.verdict == "within noise"


def test_aa_spread_raises_the_bar() -> None:
    sides = {OLD: [100.0, 101.0, 99.0], NEW: [108.0, 107.0, 109.0],
             AA1: [100.0, 90.0, 95.0], AA2: [105.0, 104.0, 106.0]}  # A/A medians 95 vs 105
    row = compare_row(sides, higher=True)
    assert row is not None
    assert row.old == 100.0
    assert row.new == 108.0
    assert row.aa_pct == pytest.approx(10 / 95 * 100)
    assert row.aa_range == (90.0, 106.0)
    assert row.verdict == "within noise"  # +8% < 10.5% A/A spread
    assert compare_row({**sides, NEW: [120.0]}, higher=True).verdict == "faster"  # type: ignore[union-attr]
    assert compare_row({**sides, NEW: [80.0]}, higher=True).verdict == "slower"  # type: ignore[union-attr]


def test_lower_is_better_flips_the_verdict() -> None:
    faster = compare_row({OLD: [2.0], NEW: [1.5]}, higher=False)
    slower = compare_row({OLD: [2.0], NEW: [2.5]}, higher=False)
    assert faster is not None
    assert slower is not None
    assert (faster.verdict, faster.aa_pct, faster.aa_range) == ("faster", None, None)
    assert slower.verdict == "slower"


def test_missing_side_gives_no_row() -> None:
    assert compare_row({OLD: [1.0]}, higher=True) is None


def test_collect_keeps_soniq_rows_and_derives_cpu_per_job() -> None:
    runs = [
        (OLD, [_process(10_000.0, cpu_pct=50.0), _process(1_000.0, system="pgqueuer"),
               _record("latency", {"p50_ms": 2.0, "p99_ms": 4.0}, samples=100)]),
        (NEW, [_process(10_000.0, error="boom"),
               _record("latency", {"p50_ms": 1.0, "p99_ms": 4.1}, samples=100)]),
    ]
    data = collect(runs)
    by_label = {(k[0], k[2]): v for k, v in data.items()}
    assert set(by_label) == {("process", "jobs/s"), ("process", "worker CPU µs/job"),
                             ("latency", "p50 ms"), ("latency", "p99 ms")}
    assert by_label["process", "jobs/s"] == {OLD: [10_000.0]}  # the failed NEW step is left out
    # 50% of a core for 0.5 s = 0.25 CPU-seconds over 5,000 jobs = 50 µs a job
    assert by_label["process", "worker CPU µs/job"][OLD] == [pytest.approx(50.0)]
    assert by_label["latency", "p50 ms"] == {OLD: [2.0], NEW: [1.0]}


def test_markdown_table_per_scenario() -> None:
    runs = [(side, [_process(rate), _record("latency", {"p50_ms": p50, "p99_ms": 4.0},
                                            samples=100)])
            for side, rate, p50 in [(AA1, 10_000.0, 2.0), (AA2, 10_100.0, 2.02),
                                    (OLD, 10_000.0, 2.0), (NEW, 12_000.0, 2.01)]]
    text = markdown(collect(runs), "Compare a → b")
    assert text.startswith("# Compare a → b\n")
    assert text.index("## process") < text.index("## latency")
    lines = text.splitlines()
    rate = next(line for line in lines if "N=5,000, concurrency=100, jobs/s" in line)
    assert "| 10,000 (10,000–10,000) | 12,000 (12,000–12,000) | +20.0% | ±1.0% |" in rate
    assert rate.endswith("| faster |")
    cpu = next(line for line in lines if "worker CPU µs/job" in line)
    assert cpu.endswith("| faster |")  # same CPU % over a shorter run: less CPU per job
    p50 = next(line for line in lines if "p50 ms" in line)
    assert p50.endswith("| within noise |")
    assert "| 2.00 (2.00–2.00) | 2.01 (2.01–2.01) | +0.5% | ±1.0% | 2.00–2.02 |" in p50
