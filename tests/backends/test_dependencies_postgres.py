"""Dependencies on PostgreSQL under concurrency (READ COMMITTED, many connections): the fan-in
protocol of migration 0015 releases a dependent exactly once whatever order its dependencies
end in, an insert racing a finish never loses the release, a rolled-back insert leaves nothing,
released jobs wake the right channel in a ``db_schema``, and the upgrade of a database in use."""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg
import pytest

from soniq import EnqueueOptions, Soniq
from soniq.backends import _bridge
from soniq.backends.postgres import PostgresBackend
from soniq.backends.postgres.names import names
from soniq.ids import new_id
from soniq.serialization import dumps
from soniq.settings import load_settings
from soniq.types import JobOutcome, JobStatus, NewJob
from tests.backends.test_postgres import QUEUED_ROW, RUNNING_ROW, labels_from, migrate_to, schema_of
from tests.helpers import on_connection, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

VERSION = 15  # the migration that adds dependencies
WORKER = "00000000-0000-7000-8000-000000000001"


def backend_for(url: str, **settings: Any) -> PostgresBackend:
    return PostgresBackend(url, load_settings({"database_url": url, "pool_min_size": 1,
                                               "pool_max_size": 3, **settings}))


def job(*depends_on: str, policy: str = "cancel") -> NewJob:
    return NewJob(id=new_id(), job_name="tests.step", queue="default", priority=100,
                  args=dumps({}), max_attempts=3, depends_on=tuple(depends_on),
                  on_dependency_failure=policy if depends_on else None)


async def status_of(url: str, job_id: str) -> tuple[str, int | None]:
    row = await on_connection(url, lambda conn: conn.fetchrow(
        "SELECT status, waiting_on FROM soniq_jobs WHERE id = $1::uuid", job_id))
    return row["status"], row["waiting_on"]


async def finish(backend: PostgresBackend, *ids: str, status: JobStatus = JobStatus.DONE
                 ) -> None:
    """Claim what is due, end ``ids`` with ``status`` and give the rest back."""
    claimed = {j.id: j for j in await backend.claim_jobs(WORKER, None, 1000)}
    assert set(ids) <= claimed.keys(), (ids, claimed.keys())
    await backend.complete_jobs([
        JobOutcome(i, j.lease_id, status) if i in ids
        else JobOutcome(i, j.lease_id, JobStatus.QUEUED, refund_attempt=True)
        for i, j in claimed.items()])


async def test_two_dependencies_finishing_in_one_batch_release_their_dependent_once(
        pg_url: str) -> None:
    backend = backend_for(pg_url)
    try:
        a, b = job(), job()
        fan_in = job(a.id, b.id)
        await backend.insert_jobs([a, b, fan_in])
        assert await status_of(pg_url, fan_in.id) == ("waiting", 2)
        await finish(backend, a.id, b.id)
        assert await status_of(pg_url, fan_in.id) == ("queued", 0)
        edges = await on_connection(pg_url, lambda conn: conn.fetch(
            "SELECT satisfied FROM soniq_dependencies WHERE dependent = $1::uuid", fan_in.id))
        assert [e["satisfied"] for e in edges] == [True, True]
    finally:
        await backend.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_racing_finishes_release_a_fan_in_exactly_once(pg_url: str) -> None:
    """200 dependencies of one fan-in job, claimed and finished by 10 loops on 5 backends
    concurrently, in batches of 1-4: the fan-in is released once, after the last one, with
    every edge satisfied once."""
    backends = [backend_for(pg_url) for _ in range(5)]
    try:
        deps = [job() for _ in range(200)]
        fan_in = job(*(d.id for d in deps))
        await backends[0].insert_jobs([*deps, fan_in])
        finished: list[str] = []

        async def loop(n: int) -> None:
            backend = backends[n % len(backends)]
            worker = f"00000000-0000-7000-8000-{n:012d}"
            while batch := [j for j in await backend.claim_jobs(worker, None, 1 + n % 4)
                            if j.id != fan_in.id]:
                await backend.complete_jobs(
                    [JobOutcome(j.id, j.lease_id, JobStatus.DONE) for j in batch])
                finished.extend(j.id for j in batch)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(loop, n)
        assert sorted(finished) == sorted(d.id for d in deps)
        status, waiting_on = await status_of(pg_url, fan_in.id)
        assert (status in ("queued", "processing"), waiting_on) == (True, 0)
    finally:
        for backend in backends:
            await backend.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("order", ["insert first", "finish first"])
async def test_a_dependency_finishing_while_its_dependent_is_inserted(pg_url: str,
                                                                       order: str) -> None:
    """The dependent's insert (inside a caller's transaction) and the dependency's finish race:
    with the insert holding the dependency's lock, the finish waits for its commit and then
    releases the dependent; with the finish first, the insert sees it done. Never stuck."""
    app = Soniq(database_url=pg_url, pool_min_size=1, enqueue_validation="none")
    backend = app.backend
    dependency = job()
    await backend.insert_jobs([dependency])
    [claimed] = await backend.claim_jobs(WORKER, None, 1)
    conn = await _bridge.call(asyncpg.connect, pg_url)
    try:
        if order == "finish first":
            await backend.complete_jobs(
                [JobOutcome(claimed.id, claimed.lease_id, JobStatus.DONE)])
        tx = conn.transaction()
        await _bridge.call(tx.start)
        dependent = await app.enqueue("tests.step", options=EnqueueOptions(
            depends_on=[dependency.id]), connection=conn)
        if order == "insert first":
            async with anyio.create_task_group() as tg:
                tg.start_soon(backend.complete_jobs,  # waits for the insert's commit
                              [JobOutcome(claimed.id, claimed.lease_id, JobStatus.DONE)])
                await wait_for(lambda: _waiting_for_lock(pg_url), timeout=10)
                await _bridge.call(tx.commit)
        else:
            await _bridge.call(tx.commit)
        assert await status_of(pg_url, dependent) == ("queued", 0)
    finally:
        await _bridge.call(conn.close)
        await app.close()


async def _waiting_for_lock(url: str) -> bool:
    return bool(await on_connection(url, lambda conn: conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'")))


async def test_a_rolled_back_insert_leaves_no_job_and_no_edge(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, pool_min_size=1, enqueue_validation="none")
    try:
        first = await app.enqueue("tests.step")
        conn = await _bridge.call(asyncpg.connect, pg_url)
        try:
            tx = conn.transaction()
            await _bridge.call(tx.start)
            await app.enqueue("tests.step", options=EnqueueOptions(depends_on=[first]),
                              connection=conn)
            await _bridge.call(tx.rollback)
        finally:
            await _bridge.call(conn.close)
        counts = await on_connection(pg_url, lambda conn: conn.fetchrow(
            "SELECT (SELECT count(*) FROM soniq_jobs) AS jobs,"
            " (SELECT count(*) FROM soniq_dependencies) AS edges"))
        assert (counts["jobs"], counts["edges"]) == (1, 0)
    finally:
        await app.close()


async def test_a_replayed_dependency_under_wait_counts_once(pg_url: str) -> None:
    """A dead-lettered dependency of a "wait" dependent replayed twice (the first replay dead
    letters again): the dependent is released once, when the dependency finally succeeds."""
    backend = backend_for(pg_url)
    try:
        dependency, other = job(), job()
        dependent = job(dependency.id, other.id, policy="wait")
        await backend.insert_jobs([dependency, other, dependent])
        await finish(backend, dependency.id, status=JobStatus.DEAD_LETTER)
        assert backend.dead_letters is not None
        assert await backend.dead_letters.replay(dependency.id)
        await finish(backend, dependency.id, status=JobStatus.DEAD_LETTER)
        assert await backend.dead_letters.replay(dependency.id)
        await finish(backend, dependency.id)
        assert await status_of(pg_url, dependent.id) == ("waiting", 1)
        await finish(backend, other.id)
        assert await status_of(pg_url, dependent.id) == ("queued", 0)
    finally:
        await backend.close()


async def test_released_jobs_wake_the_channel_of_their_schema(pg_url: str) -> None:
    """The trigger computes the NOTIFY channel from its schema as :func:`names` does, for a
    short schema name and for one long enough to need the digest form."""
    for schema in (f"deps_{new_id()[-6:]}", "d" * 50):
        backend = backend_for(pg_url, db_schema=schema)
        got: list[str] = []
        channel = names(schema).jobs_channel
        conn = await _bridge.call(asyncpg.connect, pg_url)
        try:
            await backend.migrate()
            dependency = job()
            dependent = job(dependency.id)
            await backend.insert_jobs([dependency, dependent])
            await _bridge.call(conn.add_listener, channel,
                               lambda *args, into=got: into.append(args[-1]))
            await finish(backend, dependency.id)
            await wait_for(lambda into=got: into == ["default"], timeout=10)
        finally:
            await _bridge.call(conn.close)
            await backend.close()
            await on_connection(pg_url, lambda c, s=schema: c.execute(
                f'DROP SCHEMA "{s}" CASCADE'))


async def test_the_dependencies_migration_upgrades_a_database_in_use(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """Migration 15 (status 'waiting', edges, workflows, the trigger) on a database at the
    version before with queued, running and done jobs: they stay claimable and finishable, and
    dependencies work afterwards, also on a job that was running during the upgrade."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    queued, running, lease = new_id(), new_id(), new_id()

    async def before(conn: Any) -> None:
        await migrate_to(conn, VERSION - 1)
        await conn.execute(QUEUED_ROW, queued)
        await conn.execute(RUNNING_ROW, running, lease)

    await on_connection(url, before)
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(VERSION)
        dependent = job(running)
        await backend.insert_jobs([dependent])
        assert await status_of(url, dependent.id) == ("waiting", 1)
        assert await backend.complete_jobs(
            [JobOutcome(running, lease, JobStatus.DONE)]) == [running]
        claimed = await backend.claim_jobs(new_id(), None, 10)
        assert sorted(c.id for c in claimed) == sorted([queued, dependent.id])
        assert {c.id: c.has_dependencies for c in claimed} == {queued: False,
                                                              dependent.id: True}
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)


async def test_the_cheaper_settle_migration_upgrades_a_workflow_in_flight(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """Migration 16 (the fan-in protocol without a trigger function per row, its statements
    planned once) on a database at version 15 with a fan-in half settled: a dependent waiting
    on a dependency that was done before the upgrade and one running through it; a 'cancel'
    dependent of a queued job. After the upgrade the running one's finish and the queued one's
    dead letter settle them as before: one released, one cancelled."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    upgrade = VERSION + 1
    done, running, lease, queued = new_id(), new_id(), new_id(), new_id()
    fan_in, doomed = new_id(), new_id()
    waiting = ("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, max_attempts,"
               " waiting_on, on_dependency_failure) VALUES ($1::uuid, 'ok', 'default', 100,"
               " 'waiting', '{}', 3, 1, $2)")

    async def before(conn: Any) -> None:
        await migrate_to(conn, upgrade - 1)
        await conn.execute(RUNNING_ROW, running, lease)
        await conn.execute(QUEUED_ROW, queued)
        await conn.execute(QUEUED_ROW, done)
        await conn.execute("UPDATE soniq_jobs SET status = 'done', finished_at = now() "
                           "WHERE id = $1::uuid", done)
        await conn.execute("UPDATE soniq_jobs SET has_dependents = true")
        await conn.execute(waiting, fan_in, "run")
        await conn.execute(waiting, doomed, "cancel")
        await conn.executemany(
            "INSERT INTO soniq_dependencies (dependency, dependent, satisfied) "
            "VALUES ($1::uuid, $2::uuid, $3)",
            [(done, fan_in, True), (running, fan_in, False), (queued, doomed, False)])

    await on_connection(url, before)
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(upgrade)
        assert await backend.complete_jobs(
            [JobOutcome(running, lease, JobStatus.DONE)]) == [running]
        assert await status_of(url, fan_in) == ("queued", 0)
        await finish(backend, queued, status=JobStatus.DEAD_LETTER)
        assert (await status_of(url, doomed))[0] == "cancelled"
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)


async def test_a_deleted_dependent_takes_its_edges_and_nothing_else(pg_url: str) -> None:
    """Edges go with their dependent (migration 16's trigger, in place of a foreign key's
    cascade); deleting a dependency or an unrelated job leaves the other edges alone."""
    backend = backend_for(pg_url)

    async def edges() -> set[tuple[str, str]]:
        rows = await on_connection(pg_url, lambda conn: conn.fetch(
            "SELECT dependency::text, dependent::text FROM soniq_dependencies"))
        return {(row[0], row[1]) for row in rows}

    try:
        a, b, lone = job(), job(), job()
        one, two = job(a.id, b.id), job(b.id)
        await backend.insert_jobs([a, b, lone, one, two])
        assert await edges() == {(a.id, one.id), (b.id, one.id), (b.id, two.id)}
        assert await backend.delete_job(lone.id)
        assert await backend.delete_job(one.id)
        assert await edges() == {(b.id, two.id)}
        assert await backend.delete_job(b.id)  # a dependency: its dependent is cancelled
        assert await edges() == {(b.id, two.id)}
        assert await status_of(pg_url, two.id) == ("cancelled", 1)
    finally:
        await backend.close()
