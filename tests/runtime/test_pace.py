"""The fetcher's look-ahead: as many jobs as finish during two claim round trips, at most
``concurrency``, and none for slow jobs."""

from __future__ import annotations

from soniq.runtime.fetcher import Pace


def run(pace: Pace, *, finished_per_claim: int, seconds_per_claim: float, round_trip: float,
        claims: int = 20) -> None:
    now = 100.0
    for _ in range(claims):
        pace.finished += finished_per_claim
        now += seconds_per_claim
        pace.claimed(now, round_trip=round_trip, full=True)


def test_short_jobs_get_a_look_ahead_of_two_round_trips() -> None:
    pace = Pace()
    assert pace.lookahead(100) == 0  # nothing measured yet
    run(pace, finished_per_claim=50, seconds_per_claim=0.005, round_trip=0.001)  # 10 000 jobs/s
    assert pace.lookahead(100) == 20  # 10 000/s x 1 ms x 2
    assert pace.lookahead(8) == 8  # never more than the concurrency


def test_slow_jobs_get_none() -> None:
    pace = Pace()
    run(pace, finished_per_claim=10, seconds_per_claim=1.0, round_trip=0.002)  # 10 jobs/s
    assert pace.lookahead(100) == 0


def test_a_short_claim_does_not_change_the_rate() -> None:
    pace = Pace()
    run(pace, finished_per_claim=50, seconds_per_claim=0.005, round_trip=0.001)
    before = pace.lookahead(100)
    pace.finished += 1
    pace.claimed(200.0, round_trip=0.001, full=False)  # a drained queue after a long idle spell
    assert pace.lookahead(100) == before
