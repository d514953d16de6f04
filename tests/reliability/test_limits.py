"""Flow control across real ``soniq worker`` processes (SQLite and PostgreSQL): three workers
never run more than ``concurrency_limit`` jobs of a key at once; ``ordered`` jobs start in
enqueue order per key, one after the other, through retries and a worker killed mid-job (its
job is rescued and keeps its key's slot); a rate limit is shared by every worker, and so is the
hold of a ``RateLimited``; a paused queue starts nothing until it is resumed."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import anyio
import pytest

from soniq import Soniq
from tests.helpers import wait_for_status
from tests.reliability.conftest import ON_SQLITE_AND_POSTGRES
from tests.reliability.ledger import Entry, Ledger, assert_nothing_lost
from tests.reliability.workers import Workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres, pytest.mark.chaos,
              ON_SQLITE_AND_POSTGRES]


def spans(entries: list[Entry], key_of: dict[str, str]) -> dict[str, list[tuple[datetime, int]]]:
    """Per key, +1 at each start and -1 at each finish, in time order."""
    events: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for entry in entries:
        events[key_of[entry.job_id]].append((entry.at, 1 if entry.event == "start" else -1))
    for timeline in events.values():
        timeline.sort(key=lambda event: (event[0], event[1]))  # a finish before a start at a tie
    return events


async def test_three_workers_keep_the_limit_per_key(app: Soniq, pool: Workers,
                                                    ledger: Ledger) -> None:
    keys = [f"k{i}" for i in range(10)]
    args = [{"key": keys[i % len(keys)], "ms": 20} for i in range(300)]
    ids = await app.enqueue_many("limited_nap", args)
    key_of = {job_id: a["key"] for job_id, a in zip(ids, args, strict=True)}
    procs = [pool.start("--concurrency", "8") for _ in range(3)]
    await assert_nothing_lost(app, ledger, ids, timeout=90)
    await pool.stop(*procs)
    worst = {}
    for key, timeline in spans(await ledger.entries(), key_of).items():
        running = peak = 0
        for _, step in timeline:
            running += step
            peak = max(peak, running)
        worst[key] = peak
    assert max(worst.values()) <= 2, worst
    assert max(worst.values()) > 1, worst  # the limit is 2, not 1


async def test_ordered_jobs_run_in_enqueue_order_through_retries_and_a_killed_worker(
        app: Soniq, pool: Workers, ledger: Ledger) -> None:
    keys = ["a", "b", "c"]
    ids: dict[str, list[str]] = {key: [] for key in keys}
    for i in range(8):
        for key in keys:
            ids[key].append(await app.enqueue(
                "ordered_step", key=key, i=i, fail_first=i % 3 == 1,
                kill_first=key == "b" and i == 2))
    everything = [job_id for key in keys for job_id in ids[key]]
    procs = [pool.start("--concurrency", "4") for _ in range(3)]
    records = await assert_nothing_lost(app, ledger, everything, timeout=90)
    assert {r["status"] for r in records.values()} == {"done"}
    killed = ids["b"][2]
    assert [e["type"] for e in records[killed]["errors"]] == ["WorkerLost"]
    entries = await ledger.entries()
    for key in keys:
        runs = [[e for e in entries if e.job_id == job_id] for job_id in ids[key]]
        # Every run of a job ends before any run of the next job of its key starts.
        for before, after in zip(runs, runs[1:], strict=False):
            assert max(e.at for e in before) <= min(e.at for e in after), (key, before, after)
    for proc in procs:
        if proc.poll() is None:
            await pool.stop(proc)


def most_in_any_window(times: list[float], rate: float, burst: int, slack: float) -> int:
    """How far the starts at ``times`` (seconds, sorted) go past the token bucket's bound: over
    every interval [t_i, t_j], starts <= rate * (t_j - t_i + slack) + burst. ``slack`` covers
    clock rounding. Returns the worst excess (<= 0: within the bound)."""
    worst = -burst
    for i, first in enumerate(times):
        for j in range(i, len(times)):
            worst = max(worst, j - i + 1 - int(rate * (times[j] - first + slack) + burst))
    return worst


async def test_three_workers_share_one_rate_limit(app: Soniq, pool: Workers,
                                                  ledger: Ledger) -> None:
    """``rate_limit="20/s"`` per key across three worker processes: over any interval of
    length T at most 20*T + 20 starts of a key, and the rate is reached (the run takes about
    as long as the bucket allows, not far longer)."""
    args = [{"key": key, "ms": 2} for key in ("a", "b") for _ in range(80)]
    ids = await app.enqueue_many("rated_nap", args)
    key_of = {job_id: a["key"] for job_id, a in zip(ids, args, strict=True)}
    procs = [pool.start("--concurrency", "8") for _ in range(3)]
    records = await assert_nothing_lost(app, ledger, ids, timeout=90)
    await pool.stop(*procs)
    starts = await ledger.entries("start")
    assert len({entry.pid for entry in starts}) > 1  # shared by the workers, not one's
    for key in ("a", "b"):
        # The bucket governs claims: each job's started_at is its claim's time (a claimed job
        # may wait a moment in its worker's look-ahead before the ledger sees it start).
        times = sorted(r["started_at"].timestamp() for job_id, r in records.items()
                       if key_of[job_id] == key)
        assert most_in_any_window(times, 20, 20, slack=0.01) <= 0, (key, times)
        # 80 starts: 20 at once, then 60 at 20/s -- about 3 s; far longer means starved.
        assert 2.5 <= times[-1] - times[0] <= 10, times[-1] - times[0]


async def test_rate_limited_holds_the_key_in_every_worker(app: Soniq, pool: Workers,
                                                          ledger: Ledger) -> None:
    """A job of key "h" raises ``RateLimited(retry_after=1)``: for about a second no worker
    starts a job of that key, while key "free" goes on; then "h" drains, and the throttled job
    ran again with its attempt given back."""
    first = await app.enqueue("rated_nap", key="h", throttle=True)
    procs = [pool.start("--concurrency", "4") for _ in range(3)]
    await ledger.starts(1)
    rest = await app.enqueue_many("rated_nap", [{"key": key, "ms": 2}
                                                for key in ("h", "free") for _ in range(15)])
    records = await assert_nothing_lost(app, ledger, [first, *rest], timeout=60)
    await pool.stop(*procs)
    assert records[first]["attempts"] == 1
    entries = await ledger.entries()
    [held] = [e.at.timestamp() for e in entries if e.event == "throttled"]
    h_ids = set(rest[:15])
    h_starts = [e.at.timestamp() - held for e in entries
                if e.event == "start" and e.job_id in h_ids]
    free_starts = [e.at.timestamp() - held for e in entries
                   if e.event == "start" and e.job_id in set(rest[15:])]
    assert not [t for t in h_starts if 0.25 < t < 0.95], h_starts  # held everywhere
    assert max(h_starts) >= 0.95  # and released
    assert [t for t in free_starts if t < 0.95]  # another key is not held


async def test_pause_stops_starts_and_resume_drains(app: Soniq, pool: Workers,
                                                    ledger: Ledger) -> None:
    """Pausing a queue while a job of it runs: that job finishes, nothing else of the queue
    starts while it is paused (watched for a second, against three workers polling it), and
    resuming drains it."""
    running = await app.enqueue("sleep", seconds=1.0, queue="pq")
    procs = [pool.start("--concurrency", "4", "--queues", "pq") for _ in range(3)]
    await ledger.starts(1)
    assert await app.queues.pause("pq") is True
    waiting = await app.enqueue_many("nap", [{"ms": 1} for _ in range(20)], queue="pq")
    await wait_for_status(app, running, "done", timeout=30)
    paused_at = len(await ledger.entries("start"))
    await anyio.sleep(1.0)  # an absence is measured over time: no start may come
    assert len(await ledger.entries("start")) == paused_at == 1
    assert await app.queues.resume("pq") is True
    await assert_nothing_lost(app, ledger, [running, *waiting], timeout=60)
    await pool.stop(*procs)
