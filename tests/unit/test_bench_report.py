"""``benchmarks.report``: the floors' ratios and the nearest-N lookup on synthetic records."""

from __future__ import annotations

from typing import Any

from benchmarks.report import group_records, markdown, nearest, times


def _record(scenario: str, metrics: dict[str, Any], system: str = "soniq",
            **params: Any) -> dict[str, Any]:
    return {"scenario": scenario, "system": system, "backend": "postgres", "loop": "asyncio",
            "params": params, "run": 1, "metrics": metrics, "error": None, "others_pct": 0.0}


_META = {
    "machine": {"nproc": 2, "cpu": "cpu", "memory_gib": 4, "kernel": "6", "python": "3.11"},
    "postgres": {"version": "PostgreSQL 16", "shared_buffers": "128MB",
                 "synchronous_commit": "on", "fsync": "on"},
    "versions": {"soniq": "0", "asyncpg": "0"}, "git": "abc", "started": "now", "mode": "quick",
    "runs": 1, "loadavg_start": 0, "loadavg_end": 0, "seconds": 60, "peers_wanted": False,
}


def test_times_formats_a_multiple_or_unknown() -> None:
    assert times(1.834) == "1.83×"
    assert times(None) == "?"


def test_nearest_picks_the_closest_n_and_the_smaller_on_a_tie() -> None:
    groups = group_records([_record("process", {"jobs_per_s": 1.0}, "asyncpg", n=n, c=4)
                            for n in (2_000, 20_000, 100_000)])
    assert nearest(groups, 5_000) is groups[0]
    assert nearest(groups, 11_000) is groups[0]  # 9,000 away either way: the smaller
    assert nearest(groups, 70_000) is groups[2]
    assert nearest([], 5_000) is None


def test_latency_row_shows_p50_as_a_multiple_of_the_wake_up_floor() -> None:
    text = markdown(_META, [
        _record("latency", {"p50_ms": 3.0, "p99_ms": 5.0, "max_ms": 6.0}, samples=100),
        _record("latency", {"p50_ms": 2.0, "p99_ms": 4.0}, "asyncpg+notify", samples=100),
    ])
    assert "p50 = **1.50×** the wake-up floor's (p50 2.00 ms, p99 4.00 ms" in text


def test_embedded_row_uses_the_process_floor_at_the_nearest_n() -> None:
    text = markdown(_META, [
        _record("embedded", {"jobs_per_s": 5_000.0}, n=2_000, c=10),
        _record("process", {"jobs_per_s": 10_000.0}, "asyncpg", n=5_000, c=4),
        _record("process", {"jobs_per_s": 20_000.0}, "asyncpg", n=100_000, c=4),
    ])
    row = next(line for line in text.splitlines() if line.startswith("| 11 embedded"))
    assert "50% of the claim+finish floor (10,000 jobs/s, bare asyncpg, c=4 connections, N=5,000)" \
        in row


def test_embedded_row_omits_the_floor_when_none_ran() -> None:
    text = markdown(_META, [_record("embedded", {"jobs_per_s": 5_000.0}, n=2_000, c=10)])
    row = next(line for line in text.splitlines() if line.startswith("| 11 embedded"))
    assert "**5,000 jobs/s**" in row
    assert "floor" not in row


def test_limits_rows_show_the_neighbour_and_the_queue_rate_against_their_targets() -> None:
    text = markdown(_META, [
        _record("limits", {"jobs_per_s": 10_000.0}, n=100_000, c=100),
        _record("limits", {"jobs_per_s": 9_400.0, "held_queued": 100_000, "held_started": 0},
                "soniq+held-neighbour", n=100_000, c=100),
        _record("limits", {"jobs_per_s": 5_300.0, "achieved_pct": 106.0, "rate_set": 5_000.0,
                           "unlimited_jobs_per_s": 10_000.0}, "soniq+queue-rate",
                seconds=10.0, workers=3, c=100),
    ])
    neighbour = next(line for line in text.splitlines() if "beside a paused queue" in line)
    assert "**94%** of unlimited" in neighbour
    assert "100,000 queued, 0 ever started" in neighbour
    assert neighbour.endswith("❌ missed |")
    rated = next(line for line in text.splitlines() if "queue rate limit" in line)
    assert "set 5,000/s (half of 10,000 jobs/s); achieved 5,300 starts/s = **106.0%**" in rated
    assert rated.endswith("❌ missed |")
