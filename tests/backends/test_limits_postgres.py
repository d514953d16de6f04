"""Concurrency limits on PostgreSQL under concurrency (READ COMMITTED, many connections), and the
upgrade of a database in use to the migration that adds them."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import anyio
import anyio.lowlevel
import asyncpg
import pytest

from soniq.backends.postgres import PostgresBackend, maintenance, sql
from soniq.ids import new_id
from soniq.serialization import dumps
from soniq.settings import load_settings
from soniq.types import JobOutcome, JobStatus, NewJob
from tests.backends.test_postgres import QUEUED_ROW, RUNNING_ROW, labels_from, migrate_to, schema_of
from tests.helpers import on_connection

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

NAME = "tests.limited"
VERSION = 13  # the migration that adds concurrency limits


def backend_for(url: str) -> PostgresBackend:
    return PostgresBackend(url, load_settings({"database_url": url, "pool_min_size": 1,
                                               "pool_max_size": 2}))


def limited(key: str, limit: int = 1) -> NewJob:
    return NewJob(id=new_id(), job_name=NAME, queue="default", priority=100, args=dumps({}),
                  max_attempts=3, concurrency_key=key, concurrency_limit=limit)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_racing_claimers_and_producers_never_run_two_of_a_key(pg_url: str) -> None:
    """20 claim loops on 10 backends race for 1,000 jobs over 5 keys (concurrency_limit=1)
    while two producers still enqueue them (one job, or a few, per insert) and the claimers
    finish what they claim: never two running per key -- by a ledger kept by the claimers and by
    the database's own state -- and every job ends done with no reconciliation."""
    keys = [f"k{i}" for i in range(5)]
    backends = [backend_for(pg_url) for _ in range(10)]
    producer = backend_for(pg_url)
    running: Counter[str] = Counter()
    worst = 0
    produced = anyio.Event()
    done: list[str] = []
    total = 1_000

    async def produce(seed: int) -> None:
        rng = random.Random(seed)
        left = total // 2
        while left:
            n = min(left, rng.choice((1, 1, 3, 7)))
            await producer.insert_jobs([limited(rng.choice(keys)) for _ in range(n)])
            left -= n
            await anyio.lowlevel.checkpoint()

    async def claimer(n: int) -> None:
        nonlocal worst
        backend = backends[n % len(backends)]
        worker = f"00000000-0000-7000-8000-{n:012d}"
        while len(done) < total:
            batch = await backend.claim_jobs(worker, None, 2)
            if not batch:
                if produced.is_set() and len(done) >= total:
                    return
                await anyio.sleep(0.005)
                continue
            for job in batch:
                assert job.concurrency_key is not None
                running[job.concurrency_key] += 1
                worst = max(worst, running[job.concurrency_key])
            await anyio.sleep(random.random() / 500)
            for job in batch:
                running[job.concurrency_key or ""] -= 1  # before the finish frees the slot
            accepted = await backend.complete_jobs(
                [JobOutcome(job.id, job.lease_id, JobStatus.DONE) for job in batch])
            done.extend(accepted)

    async def watch() -> None:
        while len(done) < total:
            rows = await on_connection(pg_url, lambda conn: conn.fetch(
                "SELECT concurrency_key, count(*) FROM soniq_jobs WHERE status = 'processing'"
                " GROUP BY concurrency_key HAVING count(*) > 1"))
            assert rows == []
            await anyio.sleep(0.02)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                for n in range(20):
                    tg.start_soon(claimer, n)
                async with anyio.create_task_group() as producers:
                    producers.start_soon(produce, 1)
                    producers.start_soon(produce, 2)
                produced.set()
    finally:
        for backend in (*backends, producer):
            await backend.close()
    assert worst == 1
    assert len(done) == len(set(done)) == total
    slots = await on_connection(pg_url, lambda conn: conn.fetch(
        "SELECT key, active FROM soniq_slots WHERE job_name = $1", NAME))
    assert {row["key"]: row["active"] for row in slots} == dict.fromkeys(keys, 0)


async def test_the_concurrency_limits_migration_upgrades_a_database_in_use(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """Migration 13 (``soniq_slots``, ``concurrency_key`` and ``hold``, claim indexes on
    claimable rows only) on a database at the version before with queued and running jobs in
    it: they stay claimable and finishable, unlimited, and limited jobs work afterwards."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    queued = [new_id() for _ in range(3)]
    running, lease = new_id(), new_id()

    async def before(conn: Any) -> None:
        await migrate_to(conn, VERSION - 1)
        for job_id in queued:
            await conn.execute(QUEUED_ROW, job_id)
        await conn.execute(RUNNING_ROW, running, lease)

    await on_connection(url, before)
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(VERSION)
        assert await backend.complete_jobs(
            [JobOutcome(running, lease, JobStatus.DONE)]) == [running]
        worker = new_id()
        claimed = await backend.claim_jobs(worker, None, 10)
        assert sorted(c.id for c in claimed) == sorted(queued)
        assert {c.concurrency_key for c in claimed} == {None}
        jobs = [limited("k") for _ in range(2)]
        await backend.insert_jobs(jobs)
        [first] = await backend.claim_jobs(worker, None, 10)
        assert first.id == jobs[0].id
        await backend.complete_jobs([JobOutcome(first.id, first.lease_id, JobStatus.DONE)])
        assert [c.id for c in await backend.claim_jobs(worker, None, 10)] == [jobs[1].id]
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)


async def test_slots_live_in_the_backends_schema(pg_url: str) -> None:
    """With ``db_schema`` the slots, parked jobs and hand-overs stay in that schema: the same key
    in the default schema is another slot."""
    schema = f"lim_{new_id()[-8:]}"
    inner = PostgresBackend(pg_url, load_settings({"database_url": pg_url, "db_schema": schema,
                                                   "pool_min_size": 1, "pool_max_size": 2}))
    outer = backend_for(pg_url)
    try:
        await inner.migrate()
        jobs = [limited("k") for _ in range(2)]
        await inner.insert_jobs(jobs)
        await outer.insert_jobs([limited("k")])
        worker = new_id()
        [first] = await inner.claim_jobs(worker, None, 10)
        assert first.id == jobs[0].id
        assert len(await outer.claim_jobs(worker, None, 10)) == 1  # its own slot
        await inner.complete_jobs([JobOutcome(first.id, first.lease_id, JobStatus.DONE)])
        assert [c.id for c in await inner.claim_jobs(worker, None, 10)] == [jobs[1].id]
        assert await inner.reconcile_slots({NAME: 1}) == 0
    finally:
        await inner.close()
        await outer.close()
        await on_connection(pg_url, lambda conn: conn.execute(f"DROP SCHEMA {schema} CASCADE"))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pruning_idle_slots_never_loses_a_slot_an_insert_takes(pg_url: str) -> None:
    """``prune_control`` against an insert taking the slot of an idle row (``active = 0``),
    each holding the row first: a row the insert holds (uncommitted ``ON CONFLICT DO UPDATE``)
    is skipped without waiting and keeps its slot; an insert that meets a row the prune holds
    waits for the delete's commit, then creates the row afresh with its slot taken."""
    backend = backend_for(pg_url)
    q = sql.build(None)
    first = limited("k")
    holder = await asyncpg.connect(pg_url)
    watcher = await asyncpg.connect(pg_url)
    worker = new_id()
    try:
        await backend.insert_jobs([first])
        assert await backend.delete_job(first.id)  # the key's row stays, idle
        # 1. The insert holds the row: the prune skips it, and the slot stays taken.
        async with holder.transaction():
            await holder.fetch(q.slots.insert_limited_job, first.id, NAME, "default", 100, "{}",
                               3, None, "k", 1, None)
            with anyio.fail_after(5):
                assert await backend.prune_control(audit_retention=0) == 0
        [taken] = await backend.claim_jobs(worker, None, 10)
        assert taken.id == first.id
        await backend.complete_jobs([JobOutcome(taken.id, taken.lease_id, JobStatus.DONE)])
        # 2. The prune holds the row (deleted, not committed): the insert waits, then takes a
        # slot in a row of its own.
        second = limited("k")
        pruning = holder.transaction()
        await pruning.start()
        status = await holder.execute(maintenance.control_sql(q.names).prune_slots, 100)
        assert status == "DELETE 1"
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(backend.insert_jobs, [second])
                while not await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"):
                    await anyio.sleep(0.01)  # the insert waits for the delete's lock
                await pruning.commit()
        [again] = await backend.claim_jobs(worker, None, 10)
        assert again.id == second.id
        assert await watcher.fetch("SELECT key, active FROM soniq_slots WHERE job_name = $1",
                                   NAME) == [("k", 1)]
    finally:
        await holder.close()
        await watcher.close()
        await backend.close()
