"""The ledger oracle and the invariants every reliability test ends with.

Jobs of tests/apps/chaos.py write ``start``/``finish`` rows (job id, attempt, lease, pid) to the
ledger table over connections of their own. :func:`assert_nothing_lost` then checks, from the
ledger and the jobs table:

- every enqueued job reached a final state (``done``, ``dead_letter``, ``cancelled``);
- at most one ``finish`` per lease, and a ``done`` job has a finish;
- ``attempts`` equals the attempts that were used: the distinct attempt numbers that started,
  plus attempts lost with their worker before the job started (a ``WorkerLost`` error for an
  attempt with no start). Shutdown re-queues and snoozes run again under the same number, and a
  job given back at shutdown and then cancelled unrun (``refunded``) used one attempt less;
- runs of one job never overlap, unless the test allows it (a zombie fenced out);
- no job is left ``processing`` and nothing due is left ``queued``: the queue drained.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg import Record

from soniq import Soniq
from tests.apps.chaos import LEDGER_TABLE
from tests.helpers import wait_for

FINAL = ("done", "dead_letter", "cancelled")


@dataclass(frozen=True)
class Entry:
    job_id: str
    attempt: int
    lease_id: str
    pid: int
    event: str
    at: datetime


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = url

    async def create(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(f"""
                CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
                    seq bigserial PRIMARY KEY, job_id text NOT NULL, attempt int NOT NULL,
                    lease_id text NOT NULL, pid int NOT NULL, event text NOT NULL,
                    at timestamptz NOT NULL DEFAULT clock_timestamp())""")
            await conn.execute(f"TRUNCATE {LEDGER_TABLE}")
        finally:
            await conn.close()

    async def entries(self, event: str | None = None) -> list[Entry]:
        conn = await asyncpg.connect(self.url)
        try:
            rows: list[Record] = await conn.fetch(
                f"SELECT job_id, attempt, lease_id, pid, event, at FROM {LEDGER_TABLE} "
                "WHERE $1::text IS NULL OR event = $1 ORDER BY seq", event)
        finally:
            await conn.close()
        return [Entry(*row) for row in rows]

    async def starts(self, count: int = 1, *, timeout: float = 30) -> list[Entry]:
        """Wait until at least ``count`` start rows exist; return them all."""
        async def check() -> list[Entry]:
            rows = await self.entries("start")
            return rows if len(rows) >= count else []

        found: list[Entry] = await wait_for(check, timeout=timeout, interval=0.05,
                                            message=f"{count} job start(s) in the ledger")
        return found


async def wait_final(app: Soniq, ids: list[str], *, timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until every job in ``ids`` is final; returns their records by id."""
    wanted = set(ids)

    async def check() -> dict[str, dict[str, Any]] | None:
        records = {}
        for status in FINAL:
            offset = 0
            while True:
                page = await app.list_jobs(status=status, limit=1000, offset=offset)
                records.update({r["id"]: dict(r) for r in page if r["id"] in wanted})
                if len(page) < 1000:
                    break
                offset += 1000
        return records if len(records) == len(wanted) else None

    try:
        found: dict[str, dict[str, Any]] = await wait_for(
            check, timeout=timeout, interval=0.25, message=f"{len(ids)} jobs to reach a final state")
    except AssertionError:
        stuck = []
        for job_id in ids:
            record = await app.get_job(job_id)
            if record is None or record["status"] not in FINAL:
                stuck.append((job_id, None if record is None else record["status"]))
        raise AssertionError(f"{len(stuck)} job(s) not final: {stuck[:10]}") from None
    return found


async def assert_nothing_lost(app: Soniq, ledger: Ledger, ids: list[str], *, timeout: float = 60,
                              overlap_allowed: frozenset[str] = frozenset(),
                              refunded: frozenset[str] = frozenset(),
                              ambiguous: int = 0) -> dict[str, dict[str, Any]]:
    """The invariants of the module docstring; returns the final records by id. ``ambiguous``:
    enqueues that raised on a lost connection, each of which may have committed all the same
    (its answer was lost, not its transaction), so up to that many unknown jobs may run."""
    records = await wait_final(app, ids, timeout=timeout)
    entries = await ledger.entries()
    by_job: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_job[entry.job_id].append(entry)
    unknown = set(by_job) - set(ids)
    assert len(unknown) <= ambiguous, (
        f"the ledger has runs of jobs nobody enqueued: {sorted(unknown)[:5]}")

    finishes = Counter(e.lease_id for e in entries if e.event == "finish")
    twice = {lease: n for lease, n in finishes.items() if n > 1}
    assert not twice, f"leases finished more than once: {twice}"

    for job_id, record in records.items():
        runs = by_job.get(job_id, [])
        started = {e.attempt for e in runs if e.event == "start"}
        lost = {err["attempt"] for err in record["errors"]
                if err["type"] == "WorkerLost" and err["attempt"] not in started}
        used = len(started | lost) - (job_id in refunded)
        assert record["attempts"] == used, (
            f"job {job_id}: attempts={record['attempts']} but started {sorted(started)} and lost "
            f"unstarted {sorted(lost)}: {runs}")
        if record["status"] == "done":
            assert any(e.event == "finish" for e in runs), f"job {job_id} is done with no finish"
        if job_id not in overlap_allowed:
            _assert_no_overlap(job_id, runs)

    counts = await app.get_queue_stats()
    busy = {s["queue"]: (s["processing"], s["queued"]) for s in counts
            if s["processing"] or s["queued"]}
    assert not busy, f"the queue did not drain (processing, queued) by queue: {busy}"
    return records


def _assert_no_overlap(job_id: str, runs: list[Entry]) -> None:
    """Each lease's start..finish interval ends before the next lease's starts."""
    spans: dict[str, list[datetime]] = {}
    for entry in runs:
        spans.setdefault(entry.lease_id, []).append(entry.at)
    ordered = sorted(spans.items(), key=lambda item: min(item[1]))
    for (lease_a, times_a), (lease_b, times_b) in zip(ordered, ordered[1:], strict=False):
        if len(times_a) > 1:  # a run that never finished (killed) has no end to overlap with
            assert max(times_a) <= min(times_b), (
                f"job {job_id}: lease {lease_b} started before lease {lease_a} finished")
