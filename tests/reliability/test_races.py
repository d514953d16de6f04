"""Races between processes: many workers on one backlog, many producers on one unique key, several
schedulers on one schedule, several ``soniq setup`` on one fresh database.

Sizes scale with SONIQ_STRESS (a factor on the default sizes, e.g. SONIQ_STRESS=10 for 50 000
jobs on 8 workers as in the issue; the default keeps CI short).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import anyio
import asyncpg
import pytest

from soniq import Soniq
from tests.helpers import wait_for
from tests.reliability.cluster import PrivateCluster
from tests.reliability.conftest import chaos_app
from tests.reliability.ledger import Ledger, assert_nothing_lost
from tests.reliability.workers import ROOT, Workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres, pytest.mark.chaos]

STRESS = float(os.environ.get("SONIQ_STRESS", "1"))


async def registered(app: Soniq, workers: Workers, count: int) -> None:
    async def check() -> bool:
        dead = [proc for proc in workers.procs if proc.poll() is not None]
        assert not dead, f"a worker exited: {workers.output(dead[0])[-2000:]}"
        return len(await app.backend.list_workers()) >= count

    await wait_for(check, timeout=60, message=f"{count} workers registered")


async def test_eight_workers_never_run_the_same_attempt_twice(
        cluster: PrivateCluster, workers: Workers, ledger: Ledger) -> None:
    # On a private server: eight workers' connections would crowd the shared one.
    total = int(5_000 * STRESS)
    url = cluster.url("soniq")
    app = chaos_app(url)
    try:
        procs = [workers.start("--concurrency", "16", url=url, SONIQ_POOL_MIN_SIZE="1",
                               SONIQ_POOL_MAX_SIZE="5")
                 for _ in range(8)]
        await registered(app, workers, len(procs))
        ids = await app.enqueue_many("nap", [{"ms": 2} for _ in range(total)])
        records = await assert_nothing_lost(app, ledger, ids, timeout=120 * max(STRESS, 1))
        await workers.stop(*procs)
    finally:
        await app.close()
    starts = await ledger.entries("start")
    assert len(starts) == len({e.job_id for e in starts}) == total, "a job started twice"
    assert all(r["attempts"] == 1 and r["status"] == "done" for r in records.values())
    share = Counter(e.pid for e in starts)
    assert len(share) >= 4, f"too few workers took part: {share}"


async def test_fifty_producers_racing_on_one_unique_key_make_one_job(
        app: Soniq, pg_url: str, workers: Workers, ledger: Ledger) -> None:
    producers = [Soniq(database_url=pg_url, pool_min_size=0, pool_max_size=5) for _ in range(10)]
    for producer in producers:
        spec = app.registry.get("sleep")
        assert spec is not None
        producer.registry.register(spec.func, name="sleep")

    async def race(seconds: float, queue: str) -> set[str]:
        ids: list[str] = []

        async def one(producer: Soniq) -> None:
            ids.append(await producer.enqueue("sleep", seconds=seconds, queue=queue,
                                              dedup_key="the-key"))

        async with anyio.create_task_group() as tg:
            for n in range(50):  # 50 at once over 50 connections of 10 apps
                tg.start_soon(one, producers[n % len(producers)])
        assert len(ids) == 50
        return set(ids)

    try:
        [first] = await race(2.0, "default")
        proc = workers.start("--queues", "default")
        await ledger.starts(1)  # the job runs: its key is free again, its row untouched
        running = await app.get_job(first)
        # (on a queue nobody serves yet: a claim would free the key again mid-race)
        [second] = await race(0.0, "parked")
        assert second != first
        after = await app.get_job(first)
        assert running is not None and after is not None
        assert (after["status"], after["args"], after["attempts"]) == (
            "processing", running["args"], 1)
        assert len(await app.list_jobs(limit=10)) == 2
        other = workers.start("--queues", "parked")
        records = await assert_nothing_lost(app, ledger, [first, second])
        assert {r["status"] for r in records.values()} == {"done"}
        await workers.stop(proc, other)
    finally:
        for producer in producers:
            await producer.close()


async def test_a_schedule_fired_by_three_workers_makes_one_job_per_fire_time(
        app: Soniq, pg_url: str, workers: Workers, ledger: Ledger) -> None:
    await app.scheduler.add("every-second", every=1, target="noop")
    procs = [workers.start(SONIQ_SCHEDULER_INTERVAL="0.05") for _ in range(3)]
    await registered(app, workers, 3)

    async def fired() -> bool:
        return len(await app.list_jobs(limit=100)) >= 6

    await wait_for(fired, timeout=30, message="six fire times")
    await app.scheduler.pause("every-second")
    await workers.stop(*procs)
    conn = await asyncpg.connect(pg_url)
    try:
        fires = await conn.fetch("SELECT fire_at, job_id::text FROM soniq_schedule_fires "
                                 "WHERE schedule_name = 'every-second' ORDER BY fire_at")
    finally:
        await conn.close()
    jobs = await app.list_jobs(limit=100)
    # One job per fire time, each fire time once, on the schedule's one-second grid.
    assert sorted(f["job_id"] for f in fires) == sorted(j["id"] for j in jobs)
    steps = [(b["fire_at"] - a["fire_at"]).total_seconds()
             for a, b in zip(fires, fires[1:], strict=False)]
    assert steps and all(step >= 1 and step.is_integer() for step in steps), steps
    await assert_nothing_lost(app, ledger, [j["id"] for j in jobs], timeout=30)


async def test_setup_run_by_five_processes_at_once_migrates_once(
        fresh_database: tuple[str, str]) -> None:
    _, url = fresh_database
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: list[tuple[int, str]] = []

    async def setup() -> None:
        done = await anyio.run_process([sys.executable, "-m", "soniq", "setup",
                                        "--database-url", url], env=env, check=False)
        results.append((done.returncode, done.stderr.decode() + done.stdout.decode()))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(setup)
    assert [code for code, _ in results] == [0] * 5, results
    conn = await asyncpg.connect(url)
    try:
        labels = [row[0] for row in await conn.fetch("SELECT version FROM soniq_migrations")]
    finally:
        await conn.close()
    assert len(labels) == len(set(labels)) > 0
    probe = Soniq(database_url=url)
    try:
        info = await probe.database_info()
        assert not info["pending_migrations"]
    finally:
        await probe.close()

