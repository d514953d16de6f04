"""Progress and checkpoint storage: the migrations that add them (PostgreSQL 0019, SQLite 0013)
on databases in use, and a hundred jobs checkpointing at once on PostgreSQL."""

from __future__ import annotations

import sqlite3
from typing import Any

import anyio
import pytest

from soniq import JobContext, Soniq
from soniq.backends.base import StorageBackend
from soniq.backends.sqlite import SqliteBackend
from soniq.backends.sqlite.sql import to_db
from soniq.ids import new_id
from soniq.migrations import load_migrations
from soniq.serialization import utc_now
from soniq.types import JobOutcome, JobState, JobStatus, NewJob
from tests.backends.test_postgres import (
    QUEUED_ROW,
    RUNNING_ROW,
    backend_for,
    labels_from,
    migrate_to,
    schema_of,
)
from tests.backends.test_sqlite import LEASE, WORKER, _at_version
from tests.helpers import on_connection, running_worker, wait_for

pytestmark = pytest.mark.anyio

#: The migrations that add the columns.
PG_VERSION, SQLITE_VERSION = 19, 13


@pytest.mark.postgres
async def test_the_postgres_migration_upgrades_a_database_in_use(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """A database at the version before with a queued and a running job: both read with no
    progress, the running job's attempt can report and checkpoint, and the queued one's claim
    has no checkpoint."""
    url, queued, running, lease = await pg_database_in_use(pg_server, fresh_database,
                                                           PG_VERSION - 1)
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(PG_VERSION)
        for job_id in (queued, running):
            record = await backend.get_job(job_id)
            assert record is not None and record["progress"] is None
        assert await backend.job_states.save([
            JobState(running, lease, '{"step":1}', '"cp"'),
            JobState(queued, lease, "5", None)]) == [running]  # not processing: refused
        record = await backend.get_job(running)
        assert record is not None and record["progress"] == {"step": 1}
        assert await backend.complete_jobs(
            [JobOutcome(running, lease, JobStatus.DONE)]) == [running]
        [claimed] = await backend.claim_jobs(new_id(), None, 10)
        assert claimed.id == queued and claimed.checkpoint is None
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)


async def pg_database_in_use(pg_server: str, fresh_database: tuple[str, str],
                             version: int) -> tuple[str, str, str, str]:
    """A new PostgreSQL database at ``version`` holding a queued job and one running under a
    lease: its URL, their ids and the lease."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    queued, running, lease = new_id(), new_id(), new_id()

    async def before(conn: Any) -> None:
        await migrate_to(conn, version)
        await conn.execute(QUEUED_ROW, queued)
        await conn.execute(RUNNING_ROW, running, lease)

    await on_connection(url, before)
    return url, queued, running, lease


def sqlite_file_in_use(sqlite_url: str, version: int) -> tuple[str, str]:
    """A SQLite file at ``version`` holding a queued job and one running under ``LEASE``; their
    ids."""
    _at_version(sqlite_url, version)
    stamp = to_db(utc_now())
    queued, running = new_id(), new_id()
    with sqlite3.connect(sqlite_url) as conn:
        insert = ("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, attempts, "
                  "max_attempts, scheduled_at, created_at, updated_at, errors, worker_id, "
                  "lease_id) VALUES (?, 'tests.job', 'default', 100, ?, '{}', ?, 3, ?, ?, ?, "
                  "'[]', ?, ?)")
        conn.execute(insert, (queued, "queued", 0, stamp, stamp, stamp, None, None))
        conn.execute(insert, (running, "processing", 1, stamp, stamp, stamp, WORKER, LEASE))
    conn.close()
    return queued, running


async def test_the_sqlite_migration_upgrades_a_file_in_use(sqlite_url: str) -> None:
    queued, running = sqlite_file_in_use(sqlite_url, SQLITE_VERSION - 1)
    backend = SqliteBackend(sqlite_url)
    try:
        assert await backend.migrate() == [m.label for m in load_migrations("sqlite")
                                           if m.version >= SQLITE_VERSION]
        for job_id in (queued, running):
            record = await backend.get_job(job_id)
            assert record is not None and record["progress"] is None
        assert await backend.job_states.save([JobState(running, LEASE, "42", '{"a":1}'),
                                              JobState(running, new_id(), "7", None)]) == [running]
        record = await backend.get_job(running)
        assert record is not None and record["progress"] == 42
        [claimed] = await backend.claim_jobs(WORKER, None, 10)
        assert claimed.id == queued and claimed.checkpoint is None
    finally:
        await backend.close()


@pytest.mark.postgres
async def test_a_hundred_jobs_checkpoint_at_once(pg_url: str) -> None:
    """c=100 jobs each checkpointing at the same moment: all durable and done, in far fewer
    writes than checkpoints (the pool is never asked for a connection per job)."""
    app = Soniq(database_url=pg_url, poll_interval=0.05, pool_min_size=1, pool_max_size=5)
    count = 100
    started = 0
    go = anyio.Event()
    try:
        @app.job(name="page")
        async def page(ctx: JobContext, n: int) -> int:
            nonlocal started
            started += 1
            if started == count:
                go.set()
            await go.wait()
            await ctx.checkpoint({"n": n, "pad": "x" * 100})
            return n

        ids = await app.enqueue_many("page", [{"n": n} for n in range(count)])
        async with running_worker(app, concurrency=count) as worker:
            async def all_done() -> bool:
                jobs = [await app.get_job(job_id) for job_id in ids]
                return all(job is not None and job["status"] == "done" for job in jobs)
            await wait_for(all_done, timeout=60, message="100 checkpointing jobs to finish")
            writes = worker.states.writes
        assert 1 <= writes < count
    finally:
        await app.close()


async def test_saves_are_fenced_by_the_lease(storage: StorageBackend) -> None:
    """The seam on every backend: a state is written only onto a ``processing`` job under its
    lease, a None field keeps what is stored, and a refused state is no error."""
    first = NewJob(id=new_id(), job_name="tests.job", queue="default", priority=100,
                     args="{}", max_attempts=3)
    unclaimed = first._replace(id=new_id())
    await storage.insert_jobs([first])
    [claimed] = await storage.claim_jobs(new_id(), None, 1)
    await storage.insert_jobs([unclaimed])
    lease = claimed.lease_id
    assert await storage.job_states.save([]) == []
    assert await storage.job_states.save([
        JobState(claimed.id, lease, "10", '{"page":1}'),
        JobState(claimed.id, new_id(), "99", '"stale"'),  # another lease: refused
        JobState(unclaimed.id, lease, "5", None),  # not processing: refused
    ]) == [claimed.id]
    assert await storage.job_states.save([JobState(claimed.id, lease, '{"a":[1,2]}')]) == [
        claimed.id]
    record = await storage.get_job(claimed.id)
    assert record is not None and record["progress"] == {"a": [1, 2]}
    assert (await storage.get_job(unclaimed.id) or {}).get("progress") is None
    # The checkpoint was kept (None left it); the next claim after a give-back carries it.
    assert await storage.complete_jobs([JobOutcome(claimed.id, lease, JobStatus.QUEUED,
                                                   refund_attempt=True)]) == [claimed.id]
    again = {job.id: job for job in await storage.claim_jobs(new_id(), None, 10)}
    assert again[claimed.id].checkpoint == '{"page":1}'
    assert again[unclaimed.id].checkpoint is None
    assert await storage.job_states.save([JobState(claimed.id, lease, "50")]) == []
