"""Durable functions' step storage (``backend.steps``): the seam on every backend (fenced by the
lease, ``ON CONFLICT DO NOTHING``, drops, gone with the job) and the migrations that add it
(PostgreSQL 0020, SQLite 0014) on databases in use."""

from __future__ import annotations

from datetime import timedelta

import pytest

from soniq.backends.base import StorageBackend
from soniq.backends.sqlite import SqliteBackend
from soniq.ids import new_id
from soniq.migrations import load_migrations
from soniq.serialization import utc_now
from soniq.types import JobOutcome, JobStatus, NewJob
from soniq.types.durable import StepRow, StepWrite
from tests.backends.test_job_states import pg_database_in_use, sqlite_file_in_use
from tests.backends.test_postgres import (
    backend_for,
    labels_from,
    schema_of,
)
from tests.backends.test_sqlite import LEASE

pytestmark = pytest.mark.anyio

#: The migrations that add the table.
PG_VERSION, SQLITE_VERSION = 20, 14


def row(key: str, position: int, value: str = '"v"', status: str = "done") -> StepRow:
    return StepRow(key, position, "mod.fn", "digest", status, value)


async def test_step_writes_are_fenced_and_go_with_their_job(storage: StorageBackend) -> None:
    job = NewJob(id=new_id(), job_name="tests.job", queue="default", priority=100, args="{}",
                 max_attempts=3)
    unclaimed = job._replace(id=new_id())
    await storage.insert_jobs([job])
    [claimed] = await storage.claim_jobs(new_id(), None, 1)
    await storage.insert_jobs([unclaimed])
    lease = claimed.lease_id
    assert await storage.steps.save([]) == []
    assert await storage.steps.load(claimed.id) == []
    assert await storage.steps.save([
        StepWrite(claimed.id, lease, (row("b#1", 1), row("a#1", 0, '{"x":1}'))),
        StepWrite(claimed.id, new_id(), (row("stale#1", 2),)),  # another lease: refused
        StepWrite(unclaimed.id, lease, (row("c#1", 0),)),  # not processing: refused
    ]) == [claimed.id]
    # A key already saved is kept (ON CONFLICT DO NOTHING); a drop deletes one.
    assert set(await storage.steps.save([
        StepWrite(claimed.id, lease, (row("a#1", 0, '"other"'), row("e#1", 2, '{"t":"x"}',
                                                                   "error"))),
        StepWrite(claimed.id, lease, drop=("b#1",))])) == {claimed.id}
    assert await storage.steps.load(claimed.id) == [row("a#1", 0, '{"x":1}'),
                                                    row("e#1", 2, '{"t":"x"}', "error")]
    assert await storage.steps.load(unclaimed.id) == []
    # Given back (a sleep): the attempt's lease no longer writes, its steps stay.
    assert await storage.complete_jobs([JobOutcome(
        claimed.id, lease, JobStatus.QUEUED, refund_attempt=True,
        run_at=utc_now() + timedelta(days=1))]) == [claimed.id]
    assert await storage.steps.save([StepWrite(claimed.id, lease, drop=("a#1",))]) == []
    assert len(await storage.steps.load(claimed.id)) == 2
    assert await storage.delete_job(claimed.id)
    assert await storage.steps.load(claimed.id) == []


async def test_steps_are_pruned_with_their_job(storage: StorageBackend) -> None:
    job = NewJob(id=new_id(), job_name="tests.job", queue="default", priority=100, args="{}",
                 max_attempts=3)
    await storage.insert_jobs([job])
    [claimed] = await storage.claim_jobs(new_id(), None, 1)
    assert await storage.steps.save([StepWrite(claimed.id, claimed.lease_id,
                                               (row("a#1", 0),))]) == [claimed.id]
    assert await storage.complete_jobs([JobOutcome(
        claimed.id, claimed.lease_id, JobStatus.DONE, result='"r"',
        expires_at=utc_now() - timedelta(seconds=1))]) == [claimed.id]
    assert await storage.prune_jobs() == 1
    assert await storage.steps.load(claimed.id) == []


@pytest.mark.postgres
async def test_the_postgres_migration_upgrades_a_database_in_use(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """A database at the version before with a queued and a running job: the running attempt
    saves steps under its lease, the queued job has none."""
    url, queued, running, lease = await pg_database_in_use(pg_server, fresh_database,
                                                           PG_VERSION - 1)
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(PG_VERSION)
        assert await backend.steps.save([StepWrite(running, lease, (row("a#1", 0),)),
                                         StepWrite(queued, lease, (row("a#1", 0),))]) == [running]
        assert await backend.steps.load(running) == [row("a#1", 0)]
        assert await backend.steps.load(queued) == []
        assert await backend.delete_job(running)
        assert await backend.steps.load(running) == []
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)


async def test_the_sqlite_migration_upgrades_a_file_in_use(sqlite_url: str) -> None:
    queued, running = sqlite_file_in_use(sqlite_url, SQLITE_VERSION - 1)
    backend = SqliteBackend(sqlite_url)
    try:
        assert await backend.migrate() == [m.label for m in load_migrations("sqlite")
                                           if m.version >= SQLITE_VERSION]
        assert await backend.steps.save([StepWrite(running, LEASE, (row("a#1", 0),)),
                                         StepWrite(queued, LEASE, (row("a#1", 0),))]) == [running]
        assert await backend.steps.load(running) == [row("a#1", 0)]
        assert await backend.delete_job(running)
        assert await backend.steps.load(running) == []
    finally:
        await backend.close()
