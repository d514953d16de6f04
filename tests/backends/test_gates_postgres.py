"""Queue limits and rate limits on PostgreSQL under concurrency (READ COMMITTED, many
connections): the gated claims (:mod:`soniq.backends.postgres.gates`) never let more through
than a limit allows, and the upgrade of a database in use to the migration that adds them."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from soniq.backends.postgres import PostgresBackend
from soniq.ids import new_id
from soniq.limits import Rate, RateGate
from soniq.serialization import dumps
from soniq.settings import load_settings
from soniq.types import AuditEntry, JobOutcome, JobStatus, NewJob
from tests.backends.test_postgres import QUEUED_ROW, labels_from, migrate_to, schema_of
from tests.helpers import on_connection

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

VERSION = 14  # the migration that adds rate limits and queue limits
RATED = "tests.rated"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def backend_for(url: str) -> PostgresBackend:
    return PostgresBackend(url, load_settings({"database_url": url, "pool_min_size": 1,
                                               "pool_max_size": 2}))


def job(queue: str = "default", *, rate_key: str | None = None,
        name: str = "tests.job") -> NewJob:
    return NewJob(id=new_id(), job_name=name, queue=queue, priority=100, args=dumps({}),
                  max_attempts=3, scheduled_at=NOW - timedelta(seconds=1), rate_key=rate_key)


def audit(action: str) -> AuditEntry:
    return AuditEntry(at=NOW, actor="test", client=None, action=action, targets=(),
                      outcome="ok")


async def race(backends: list[PostgresBackend], claim: Any, *, rounds_without_work: int = 3,
               finish: bool) -> list[str]:
    """20 claim loops over ``backends`` calling ``claim(backend, worker)`` until each has come
    back empty ``rounds_without_work`` times in a row; with ``finish`` they finish what they
    claim. Returns every claimed id."""
    claimed: list[str] = []

    async def loop(n: int) -> None:
        backend = backends[n % len(backends)]
        worker = f"00000000-0000-7000-8000-{n:012d}"
        empty = 0
        while empty < rounds_without_work:
            batch = await claim(backend, worker)
            claimed.extend(j.id for j in batch)
            empty = 0 if batch else empty + 1
            if finish and batch:
                await anyio.sleep(0.001)
                await backend.complete_jobs(
                    [JobOutcome(j.id, j.lease_id, JobStatus.DONE) for j in batch])
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(loop, n)
    return claimed


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_racing_claimers_never_exceed_a_queue_concurrency_limit(pg_url: str) -> None:
    """20 claim loops on 10 backends race for 300 jobs of a queue limited to 3 running, and
    finish what they claim: the database never shows more than 3 processing (watched all the
    while), and every job runs once."""
    backends = [backend_for(pg_url) for _ in range(10)]
    try:
        jobs = [job("capped") for _ in range(300)]
        await backends[0].insert_jobs(jobs)
        assert backends[0].queues is not None
        await backends[0].queues.set("capped", "concurrency_limit", 3, audit=audit("limit"))
        worst = 0
        stop = anyio.Event()

        async def watch() -> None:
            nonlocal worst
            while not stop.is_set():
                count = await on_connection(pg_url, lambda conn: conn.fetchval(
                    "SELECT count(*) FROM soniq_jobs WHERE queue = 'capped'"
                    " AND status = 'processing'"))
                worst = max(worst, count)
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            claimed = await race(
                backends, lambda backend, worker: backend.claim_jobs(
                    worker, None, 5, limited=frozenset({"capped"})), finish=True)
            stop.set()
        assert 1 < worst <= 3
        assert sorted(claimed) == sorted(j.id for j in jobs)
    finally:
        for backend in backends:
            await backend.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_racing_claimers_take_exactly_the_tokens(pg_url: str) -> None:
    """20 claim loops race at one instant (``now`` fixed: no refill) for a queue limited to 40
    starts per hour and for jobs rate limited to 25 per hour per key over two keys: exactly
    40 of the queue's and 25 of each key's start, however the claims interleave."""
    backends = [backend_for(pg_url) for _ in range(10)]
    try:
        queued = [job("metered") for _ in range(100)]
        rated = [job("other", rate_key=key, name=RATED) for key in ('"a"', '"b"')
                 for _ in range(60)]
        await backends[0].insert_jobs(queued)
        await backends[0].insert_jobs(rated)
        assert backends[0].queues is not None
        await backends[0].queues.set("metered", "rate_limit", "40/h", audit=audit("rate"))
        gate = RateGate(RATED, Rate(25, 3600.0))
        claimed = await race(
            backends, lambda backend, worker: backend.claim_jobs(
                worker, None, 3, now=NOW, limited=frozenset({"metered"}), rates=[gate]),
            finish=False)
        names = {j.id: j.queue for j in queued} | {j.id: j.rate_key or "" for j in rated}
        assert Counter(names[i] for i in claimed) == {"metered": 40, '"a"': 25, '"b"': 25}
        # An hour later the buckets are full again.
        again = await backends[0].claim_jobs(new_id(), None, 500, now=NOW + timedelta(hours=1),
                                             limited=frozenset({"metered"}), rates=[gate])
        assert Counter(names[j.id] for j in again) == {"metered": 40, '"a"': 25, '"b"': 25}
    finally:
        for backend in backends:
            await backend.close()


async def test_the_rate_limits_migration_upgrades_a_database_in_use(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """Migration 14 (``rate_key``, hold 'rate', ``soniq_rate_buckets``, queue buckets) on a
    database at the version before with queued jobs, a parked limited job and a queue setting
    in it: they stay claimable, the parked job is handed its slot, and rate limits work."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    queued = [new_id() for _ in range(3)]
    holder, parked = new_id(), new_id()

    async def before(conn: Any) -> None:
        await migrate_to(conn, VERSION - 1)
        for job_id in queued:
            await conn.execute(QUEUED_ROW, job_id)
        for job_id, hold in ((holder, None), (parked, "slot")):
            await conn.execute("INSERT INTO soniq_jobs (id, job_name, queue, priority, status,"
                               " args, max_attempts, concurrency_key, hold) VALUES ($1::uuid,"
                               " 'lim', 'default', 100, 'queued', '{}', 3, 'k', $2::text)",
                               job_id, hold)
        await conn.execute("INSERT INTO soniq_slots VALUES ('lim', 'k', 1)")
        await conn.execute("INSERT INTO soniq_queues (name, rate_limit) VALUES ('slow', '1/h')")

    await on_connection(url, before)
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(VERSION)
        worker = new_id()
        claimed = await backend.claim_jobs(worker, None, 10)
        assert sorted(c.id for c in claimed) == sorted([*queued, holder])
        [done] = [c for c in claimed if c.id == holder]
        await backend.complete_jobs([JobOutcome(done.id, done.lease_id, JobStatus.DONE)])
        assert [c.id for c in await backend.claim_jobs(worker, None, 10)] == [parked]
        await backend.insert_jobs([job("slow") for _ in range(2)])
        assert len(await backend.claim_jobs(worker, None, 10, limited=frozenset({"slow"}))) == 1
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)


async def test_a_replayed_rate_limited_dead_letter_waits_for_its_bucket(pg_url: str) -> None:
    """A rate-limited job replayed from the dead-letter queue is held for its bucket again
    (not claimable by the plain claim), and deleting a rate-held job that holds a concurrency
    slot frees the slot."""
    backend = backend_for(pg_url)
    try:
        rated = job(rate_key='""', name=RATED)
        await backend.insert_jobs([rated])
        gate = RateGate(RATED, Rate(1, 3600.0))
        [claimed] = await backend.claim_jobs(new_id(), None, 5, rates=[gate])
        await backend.complete_jobs([JobOutcome(claimed.id, claimed.lease_id,
                                                JobStatus.DEAD_LETTER)])
        assert backend.dead_letters is not None
        assert await backend.dead_letters.replay(rated.id) == "default"
        assert await backend.claim_jobs(new_id(), None, 5) == []  # not on the plain path
        assert await backend.claim_jobs(new_id(), None, 5, rates=[gate]) == []  # no token
        both = NewJob(id=new_id(), job_name="tests.both", queue="default", priority=100,
                      args=dumps({}), max_attempts=3, concurrency_key="", concurrency_limit=1,
                      rate_key="")
        await backend.insert_jobs([both])
        assert await backend.delete_job(both.id)
        slots = await on_connection(pg_url, lambda conn: conn.fetchval(
            "SELECT active FROM soniq_slots WHERE job_name = 'tests.both'"))
        assert slots == 0
    finally:
        await backend.close()
