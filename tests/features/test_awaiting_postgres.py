"""``wait_for_job`` on PostgreSQL: woken by the NOTIFY of migration 0018's triggers (sent in the
finishing transaction, only for awaited jobs, 100 ids per payload), one LISTEN connection per
app for 1,000 waiters, polling while LISTEN is unavailable, reconnecting after it was lost, a
``db_schema``'s own channel, and the upgrade of a database in use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from soniq import EnqueueOptions, Soniq
from soniq.backends.awaiting import IDS_PER_PAYLOAD
from soniq.backends.postgres.listener import WAITERS_APPLICATION_NAME
from soniq.errors import JobNotFoundError
from soniq.ids import new_id
from soniq.types import JobOutcome, JobStatus
from tests.backends.test_postgres import (
    QUEUED_ROW,
    RUNNING_ROW,
    backend_for,
    labels_from,
    migrate_to,
    new_job,
    schema_of,
)
from tests.helpers import on_connection, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

VERSION = 18  # the migration that adds the awaited flag and its triggers
#: Far longer than any test waits: a waiter that returns was pushed, not polled.
NEVER = 60.0


def adding(**settings: Any) -> Soniq:
    """A Soniq with ``settings`` and the job ``add`` registered."""
    app = Soniq(**settings)

    @app.job(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    return app


@pytest.fixture
async def pushed(pg_url: str) -> AsyncIterator[Soniq]:
    """An app whose waiters (and workers) would poll only once a minute."""
    app = adding(database_url=pg_url, poll_interval=NEVER, heartbeat_interval=0.1,
                 pool_max_size=20)
    try:
        yield app
    finally:
        await app.close()


async def waiters_connections(url: str) -> int:
    """The LISTEN connections of ``wait_for_job`` waiters open on ``url``'s database."""
    return int(await on_connection(url, lambda conn: conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = $1", WAITERS_APPLICATION_NAME)))


async def test_a_waiter_is_woken_by_the_notification_not_by_polling(pushed: Soniq) -> None:
    job_id = await pushed.enqueue("add", a=1, b=2)
    async with pushed.running_worker():
        with anyio.fail_after(NEVER / 4):  # well before the first poll could come
            job = await pushed.wait_for_job(job_id)
    assert (job["status"], job["result"]) == ("done", 3)
    assert pushed.awaiting.listening and pushed.awaiting.subscriptions == 1


async def test_a_job_deleted_while_awaited_is_pushed_too(pushed: Soniq) -> None:
    job_id = await pushed.enqueue("add", a=1, b=2)
    got: dict[str, Any] = {}

    async def wait() -> None:
        with pytest.raises(JobNotFoundError):
            await pushed.wait_for_job(job_id, timeout=NEVER / 4)
        got["raised"] = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await wait_for(lambda: pushed.awaiting.listening and pushed.awaiting.waiting == 1,
                       message="the waiter to listen")
        await wait_for(lambda: awaited(pushed.settings.database_url, job_id),
                       message="the job to be marked")
        assert await pushed.delete_job(job_id)
    assert got == {"raised": True}


async def test_a_cancel_inside_the_dependencies_trigger_is_pushed(pushed: Soniq) -> None:
    """Migration 0015's trigger cancels the dependent of a cancelled job in a statement of its
    own; that statement's end pushes the awaited dependent."""
    first = await pushed.enqueue("add", a=1, b=1, scheduled_at=3600)
    dependent = await pushed.enqueue("add", a=2, b=2, options=EnqueueOptions(depends_on=[first]))
    got: dict[str, Any] = {}

    async def wait() -> None:
        got["job"] = await pushed.wait_for_job(dependent, timeout=NEVER / 4)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await wait_for(lambda: pushed.awaiting.listening and pushed.awaiting.waiting == 1,
                       message="the waiter to listen")
        await wait_for(lambda: awaited(pushed.settings.database_url, dependent),
                       message="the job to be marked")
        assert await pushed.cancel_job(first)
    assert got["job"]["status"] == "cancelled"


async def awaited(url: str, job_id: str) -> bool:
    return bool(await on_connection(url, lambda conn: conn.fetchval(
        "SELECT awaited FROM soniq_jobs WHERE id = $1::uuid", job_id)))


async def test_only_awaited_ends_are_sent_in_payloads_of_at_most_100_ids(pg_url: str) -> None:
    """One finishing statement ends 251 jobs, 250 of them awaited: their ids arrive in three
    payloads (100, 100, 50; each far within NOTIFY's 8,000 bytes), the other one in none.
    Marking an ended job changes nothing."""
    backend = backend_for(pg_url)
    store = backend.awaits
    assert store is not None
    payloads: list[list[str]] = []
    subscription = await store.subscribe(lambda ids: payloads.append(list(ids)), lambda: None)
    try:
        jobs = [new_job(n=i) for i in range(251)]
        await backend.insert_jobs(jobs)
        marked = {job.id for job in jobs[1:]}
        for job_id in marked:
            await store.mark(job_id)
        claimed = await backend.claim_jobs(new_id(), None, 300)
        assert len(claimed) == 251
        await backend.complete_jobs([JobOutcome(c.id, c.lease_id, JobStatus.DONE)
                                     for c in claimed])
        await wait_for(lambda: sum(map(len, payloads)) >= 250, message="the pushes")
        assert sorted(map(len, payloads)) == [50, IDS_PER_PAYLOAD, IDS_PER_PAYLOAD]
        assert {job_id for ids in payloads for job_id in ids} == marked
        assert max(len(" ".join(ids).encode()) for ids in payloads) < 4000
        await store.mark(jobs[0].id)  # ended: not flagged
        assert not await awaited(pg_url, jobs[0].id)
    finally:
        await subscription.close()
        await backend.close()


async def test_1000_waiters_share_one_listen_connection(pushed: Soniq) -> None:
    url = pushed.settings.database_url
    ids = await pushed.enqueue_many("add", [{"a": i, "b": 1} for i in range(1000)])
    results: dict[str, Any] = {}

    async def wait(job_id: str) -> None:
        results[job_id] = (await pushed.wait_for_job(job_id, timeout=NEVER * 0.75))["result"]

    async with anyio.create_task_group() as tg:
        for job_id in ids:
            tg.start_soon(wait, job_id)
        await wait_for(lambda: pushed.awaiting.waiting == 1000, timeout=60,
                       message="1,000 waiters")
        assert await waiters_connections(url) == 1
        async with pushed.running_worker(concurrency=50):
            await wait_for(lambda: len(results) == 1000, timeout=NEVER * 0.75,
                           message="every waiter, pushed (none polls before a minute)")
    assert results == {job_id: i + 1 for i, job_id in enumerate(ids)}
    assert pushed.awaiting.subscriptions == 1
    await pushed.close()
    await wait_for(lambda: _none_left(url), message="the LISTEN connection to close")


async def _none_left(url: str) -> bool:
    return await waiters_connections(url) == 0


async def test_waiters_poll_while_listen_is_unavailable(pg_url: str) -> None:
    """``listen_url`` points nowhere: waiters log it and poll (with backoff, up to
    ``poll_interval``); a worker of another app runs the job."""
    app = Soniq(database_url=pg_url, listen_url="postgresql://postgres@127.0.0.1:1/nowhere",
                poll_interval=0.2)
    worker_app = adding(database_url=pg_url, poll_interval=0.05)
    try:
        job_id = await worker_app.enqueue("add", a=2, b=2)
        async with worker_app.running_worker():
            job = await app.wait_for_job(job_id, timeout=20)
        assert (job["status"], job["result"]) == ("done", 4)
        assert not app.awaiting.listening and app.awaiting.subscriptions == 0
    finally:
        await app.close()
        await worker_app.close()


async def test_a_lost_listen_connection_is_reopened(pg_url: str) -> None:
    app = adding(database_url=pg_url, poll_interval=0.2)
    try:
        job_id = await app.enqueue("add", a=3, b=4)
        got: dict[str, Any] = {}

        async def wait() -> None:
            got["job"] = await app.wait_for_job(job_id, timeout=30)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await wait_for(lambda: app.awaiting.listening, message="the waiter to listen")
            assert await on_connection(pg_url, lambda conn: conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = $1",
                WAITERS_APPLICATION_NAME)) == 1
            await wait_for(lambda: app.awaiting.subscriptions == 2, timeout=20,
                           message="the subscription to be reopened")
            async with app.running_worker():
                await wait_for(lambda: "job" in got, timeout=20, message="the outcome")
        assert got["job"]["result"] == 7
    finally:
        await app.close()


async def test_a_db_schema_gets_its_own_channel(pg_url: str) -> None:
    app = adding(database_url=pg_url, db_schema="awaiting_tenant", poll_interval=NEVER)
    try:
        await app.setup()
        job_id = await app.enqueue("add", a=5, b=5)
        async with app.running_worker():
            with anyio.fail_after(NEVER / 4):
                job = await app.wait_for_job(job_id)
        assert job["result"] == 10
    finally:
        await app.close()
        await on_connection(pg_url, lambda conn: conn.execute(
            'DROP SCHEMA IF EXISTS "awaiting_tenant" CASCADE'))


async def test_the_awaited_migration_upgrades_a_database_in_use(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """Migration 18 on a database at version 15 with a queued and a running job: both are
    unflagged; waiting for each works, pushed, and the schema matches a fresh one."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    queued, running, lease = new_id(), new_id(), new_id()

    async def before(conn: Any) -> None:
        await migrate_to(conn, 15)
        await conn.execute(QUEUED_ROW, queued)
        await conn.execute(RUNNING_ROW, running, lease)

    await on_connection(url, before)
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(16)
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)
    assert not await awaited(url, queued) and not await awaited(url, running)

    async with Soniq(database_url=url, poll_interval=NEVER, pool_min_size=1) as app:
        @app.job(name="ok")
        async def ok() -> str:
            return "fine"

        got: dict[str, Any] = {}

        async def wait(job_id: str) -> None:
            got[job_id] = await app.wait_for_job(job_id, timeout=NEVER / 4)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, queued)
            tg.start_soon(wait, running)
            await wait_for(lambda: app.awaiting.waiting == 2 and app.awaiting.listening,
                           message="both waiters")
            await wait_for(lambda: awaited(url, running), message="the running job marked")
            assert await app.backend.complete_jobs(
                [JobOutcome(running, lease, JobStatus.DEAD_LETTER)]) == [running]
            async with app.running_worker():
                await wait_for(lambda: len(got) == 2, timeout=NEVER / 4, message="both outcomes")
    assert (got[queued]["status"], got[queued]["result"]) == ("done", "fine")
    assert got[running]["status"] == "dead_letter"
