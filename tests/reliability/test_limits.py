"""Concurrency limits across real ``soniq worker`` processes (SQLite and PostgreSQL): three
workers never run more than ``concurrency_limit`` jobs of a key at once, and ``ordered`` jobs
start in enqueue order per key, one after the other, through retries and a worker killed
mid-job (its job is rescued and keeps its key's slot)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import pytest

from soniq import Soniq
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
