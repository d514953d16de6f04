"""The storage contract of ``prune_control``, on memory, SQLite and PostgreSQL under asyncio and
trio: idle slot rows, rate buckets that are full again and audit entries past their retention
are deleted; a slot taken or with parked jobs, a bucket held, refilled lately or with queued
work, and newer audit entries stay. Time moves by ``now=``, never by sleeping."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest

from soniq import Soniq
from soniq.backends.base import StorageBackend
from soniq.backends.memory import MemoryBackend
from soniq.backends.sqlite import SqliteBackend
from soniq.ids import new_id
from soniq.limits import LONGEST_PERIOD, Rate, RateGate
from soniq.serialization import dumps
from soniq.types import AuditEntry, ClaimedJob, JobOutcome, JobStatus, NewJob

pytestmark = pytest.mark.anyio

WORKER = "00000000-0000-7000-8000-0000000000d1"
NAME = "tests.pruned"
#: A start time after every insert of the session (inserts are due at the wall clock's now; a
#: day ahead, since the module is imported when the suite starts, which may run for minutes).
T0 = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
RATES = (RateGate(NAME, Rate(10, 1.0)),)
DAY = 86_400.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new(*, concurrency_key: str | None = None, rate_key: str | None = None) -> NewJob:
    return NewJob(id=new_id(), job_name=NAME, queue="q", priority=100, args=dumps({}),
                  max_attempts=3, concurrency_key=concurrency_key,
                  concurrency_limit=1 if concurrency_key is not None else None, rate_key=rate_key)


async def claim(storage: StorageBackend, now: datetime = T0) -> list[ClaimedJob]:
    return await storage.claim_jobs(WORKER, None, 100, now=now, rates=RATES)


async def finish(storage: StorageBackend, job: ClaimedJob, status: JobStatus = JobStatus.DONE,
                 **fields: object) -> None:
    assert await storage.complete_jobs(
        [JobOutcome(job.id, job.lease_id, status, **fields)],  # type: ignore[arg-type]
        now=T0) == [job.id]


async def stored(storage: StorageBackend, table: str) -> set[str]:
    """The keys of ``NAME``'s rows in ``soniq_slots`` or ``soniq_rate_buckets``, read the way
    each backend keeps them (the test may look inside)."""
    if isinstance(storage, MemoryBackend):
        rows = storage._slots.active if table == "soniq_slots" else storage._gates.buckets
        return {key for name, key in rows if name == NAME}
    query = f"SELECT key FROM {table} WHERE job_name = "
    if isinstance(storage, SqliteBackend):
        with closing(sqlite3.connect(storage.path)) as conn:
            return {key for (key,) in conn.execute(query + "?", (NAME,))}
    async with storage.acquire() as conn:
        return {row["key"] for row in await conn.fetch(query + "$1", NAME)}


async def test_idle_slot_rows_go_taken_or_parked_ones_stay(storage: StorageBackend) -> None:
    idle, parked = new(concurrency_key="idle"), new(concurrency_key="parked")
    await storage.insert_jobs([idle, parked])
    running = {c.concurrency_key: c for c in await claim(storage)}
    await finish(storage, running["idle"])  # its slot is free again: active = 0
    await finish(storage, running["parked"], JobStatus.DEAD_LETTER)
    store = storage.dead_letters
    assert store is not None
    assert await store.replay(parked.id) == "q"  # comes back parked, with no slot taken
    busy = new(concurrency_key="busy")
    await storage.insert_jobs([busy])  # takes its key's slot
    assert await stored(storage, "soniq_slots") == {"idle", "parked", "busy"}

    assert await storage.prune_control(audit_retention=0, now=T0) == 1
    assert await stored(storage, "soniq_slots") == {"parked", "busy"}
    assert await storage.prune_control(audit_retention=0, now=T0) == 0
    # The pruned key starts afresh: its next job takes the slot; the others kept theirs.
    again = new(concurrency_key="idle")
    await storage.insert_jobs([again, new(concurrency_key="busy")])
    assert {c.id for c in await claim(storage)} == {again.id, busy.id}
    assert await storage.reconcile_slots({NAME: 1}) == 1
    assert [c.id for c in await claim(storage)] == [parked.id]


async def test_full_unheld_buckets_without_work_go(storage: StorageBackend) -> None:
    jobs = {key: new(rate_key=key) for key in ("old", "held", "held_past", "waiting")}
    never = new(rate_key="never")  # PostgreSQL creates its bucket (full) at insert
    await storage.insert_jobs([*jobs.values(), never])
    assert await storage.delete_job(never.id)
    running = {c.id: c for c in await claim(storage)}  # refilled at T0
    assert set(running) == {job.id for job in jobs.values()}
    await finish(storage, running[jobs["old"].id])
    await finish(storage, running[jobs["waiting"].id])
    for key, until in (("held", at(2 * 3600)), ("held_past", at(60))):
        await finish(storage, running[jobs[key].id], JobStatus.QUEUED, run_at=until,
                     refund_attempt=True, rate_hold=until)
        assert await storage.delete_job(jobs[key].id)  # the bucket stays held, with no work
    recent = new(rate_key="recent")
    await storage.insert_jobs([recent])
    [late] = await claim(storage, at(3000))
    assert late.id == recent.id
    await finish(storage, late)
    waiting = new(rate_key="waiting")
    await storage.insert_jobs([waiting])

    assert await stored(storage, "soniq_rate_buckets") >= {
        "old", "recent", "held", "held_past", "waiting"}
    # Within the hour nothing is full for sure: only the bucket never used goes.
    await storage.prune_control(audit_retention=0, now=at(LONGEST_PERIOD - 1))
    assert await stored(storage, "soniq_rate_buckets") == {
        "old", "recent", "held", "held_past", "waiting"}
    pruned = await storage.prune_control(audit_retention=0, now=at(LONGEST_PERIOD + 1))
    assert pruned == 2
    assert await stored(storage, "soniq_rate_buckets") == {"recent", "held", "waiting"}
    # A pruned bucket is a full one: its key's next jobs start at once.
    old = [new(rate_key="old") for _ in range(2)]
    await storage.insert_jobs(old)
    claimed = await claim(storage, at(LONGEST_PERIOD + 2))
    claimed += await claim(storage, at(LONGEST_PERIOD + 2))  # PostgreSQL: a missing one first
    assert {c.id for c in claimed} >= {job.id for job in old}


def entry(when: datetime, action: str) -> AuditEntry:
    return AuditEntry(at=when, actor="tests", client=None, action=action, targets=("q",),
                      outcome="ok")


async def test_audit_entries_past_the_retention_go(storage: StorageBackend) -> None:
    audit = storage.audit
    assert audit is not None
    for days, action in ((100, "old"), (91, "older"), (10, "new"), (0, "now")):
        await audit.record(entry(T0 - timedelta(days=days), action))
    assert await storage.prune_control(audit_retention=0, now=T0) == 0  # 0: kept forever
    assert len(await audit.list(10)) == 4
    assert await storage.prune_control(audit_retention=90 * DAY, now=T0) == 2
    assert [e.action for e in await audit.list(10)] == ["now", "new"]
    assert await storage.prune_control(audit_retention=90 * DAY, now=T0) == 0


async def test_the_cleanup_round_prunes_with_the_audit_retention(
        backend_name: str, database_url: str | None) -> None:
    app = Soniq(database_url=database_url, backend=None if database_url else backend_name,
                audit_retention=DAY)
    try:
        await app.ensure_initialized()
        audit = app.backend.audit
        assert audit is not None
        now = datetime.now(UTC)
        await audit.record(entry(now - timedelta(days=2), "old"))
        await audit.record(entry(now - timedelta(hours=1), "new"))
        slot = new(concurrency_key="k")
        await app.backend.insert_jobs([slot])
        assert await app.backend.delete_job(slot.id)  # its slot row is idle now
        assert await stored(app.backend, "soniq_slots") == {"k"}
        worker = app.worker(run_once=True)
        assert await worker.cleanup.tick() == ([], 0)
        assert [e.action for e in await audit.list(10)] == ["new"]
        assert await stored(app.backend, "soniq_slots") == set()
    finally:
        await app.close()
