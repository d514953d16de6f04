"""The storage contract of concurrency limits (slots, parking, hand-over), on memory, SQLite and
PostgreSQL under asyncio and trio: a job inserted with a ``concurrency_key`` takes a slot of its
key or waits parked; a slot goes to the key's oldest parked job when its holder ends for good."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from soniq.backends.base import StorageBackend
from soniq.ids import new_id
from soniq.serialization import dumps
from soniq.types import ClaimedJob, JobOutcome, JobStatus, NewJob, WorkerInfo

pytestmark = pytest.mark.anyio

WORKER = "00000000-0000-7000-8000-000000000001"
NAME = "tests.limited"


def limited(key: str | None = "a", limit: int | None = 2, *, name: str = NAME,
            max_attempts: int = 4, args: dict[str, object] | None = None) -> NewJob:
    return NewJob(id=new_id(), job_name=name, queue="default", priority=100,
                  args=dumps(args or {}), max_attempts=max_attempts, concurrency_key=key,
                  concurrency_limit=limit if key is not None else None)


async def claim(storage: StorageBackend, limit: int = 100) -> list[ClaimedJob]:
    return await storage.claim_jobs(WORKER, None, limit)


async def finish(storage: StorageBackend, job: ClaimedJob,
                 status: JobStatus = JobStatus.DONE, **fields: object) -> list[str]:
    return await storage.complete_jobs([JobOutcome(job.id, job.lease_id, status,
                                                   **fields)])  # type: ignore[arg-type]


async def test_claims_respect_the_limit_per_key(storage: StorageBackend) -> None:
    a = [limited("a") for _ in range(5)]
    b = [limited("b") for _ in range(3)]
    free = [limited(None) for _ in range(2)]
    for new in (*a, *b, *free):  # one at a time: each insert decides on its own
        await storage.insert_jobs([new])
    claimed = {c.id for c in await claim(storage)}
    assert claimed == {a[0].id, a[1].id, b[0].id, b[1].id, free[0].id, free[1].id}
    assert await claim(storage) == []
    [job_a] = [c for c in await storage.list_jobs(status="processing") if c["id"] == a[0].id]
    assert job_a["status"] == "processing"


async def test_bulk_insert_grants_the_free_slots_in_id_order(storage: StorageBackend) -> None:
    jobs = [limited("k", 2) for _ in range(5)] + [limited("other", 2)]
    assert await storage.insert_jobs(jobs) == [j.id for j in jobs]
    assert {c.id for c in await claim(storage)} == {jobs[0].id, jobs[1].id, jobs[5].id}
    more = [limited("k", 2) for _ in range(2)]
    await storage.insert_jobs(more)
    assert await claim(storage) == []


@pytest.mark.parametrize("ending", ["done", "dead_letter", "cancelled", "cancel", "delete"])
async def test_a_slot_is_handed_to_the_oldest_parked_job(storage: StorageBackend,
                                                         ending: str) -> None:
    jobs = [limited("k", 1) for _ in range(3)]
    for new in jobs:
        await storage.insert_jobs([new])
    [first] = await claim(storage)
    assert first.id == jobs[0].id and first.concurrency_key == "k"
    if ending == "cancel":  # a running job's cancel request: its outcome frees the slot
        assert await storage.cancel_job(first.id) == "requested"
        assert await claim(storage) == []
        assert await finish(storage, first, JobStatus.QUEUED) == [first.id]
    elif ending == "delete":
        assert await storage.delete_job(first.id)
    else:
        assert await finish(storage, first, JobStatus(ending)) == [first.id]
    [second] = await claim(storage)
    assert second.id == jobs[1].id
    assert await claim(storage) == []


async def test_cancelling_or_deleting_waiting_jobs(storage: StorageBackend) -> None:
    jobs = [limited("k", 1) for _ in range(4)]
    for new in jobs:
        await storage.insert_jobs([new])
    # The holder is queued (not claimed yet); jobs[1] and jobs[2] are parked.
    assert await storage.cancel_job(jobs[1].id) == "cancelled"  # parked: holds no slot
    assert await storage.delete_job(jobs[2].id)
    assert await storage.cancel_job(jobs[0].id) == "cancelled"  # the holder: hands over
    assert [c.id for c in await claim(storage)] == [jobs[3].id]


async def test_retry_snooze_and_give_back_keep_the_slot(storage: StorageBackend) -> None:
    jobs = [limited("k", 1) for _ in range(2)]
    for new in jobs:
        await storage.insert_jobs([new])
    [first] = await claim(storage)
    error = dumps({"attempt": 1, "type": "E", "message": "m", "traceback": None, "at": "x"})
    assert await finish(storage, first, JobStatus.QUEUED, error=error) == [first.id]
    [again] = await claim(storage)
    assert again.id == first.id and again.attempts == 2
    assert await finish(storage, again, JobStatus.QUEUED, refund_attempt=True) == [first.id]
    [third] = await claim(storage)
    assert third.id == first.id
    assert await finish(storage, third, JobStatus.DONE) == [first.id]
    assert [c.id for c in await claim(storage)] == [jobs[1].id]


async def test_ordered_jobs_start_in_enqueue_order(storage: StorageBackend) -> None:
    jobs = [limited("k", 1, args={"i": i}) for i in range(6)]
    await storage.insert_jobs(jobs[:3])
    for new in jobs[3:]:
        await storage.insert_jobs([new])
    started = []
    while batch := await claim(storage):
        assert len(batch) == 1
        started.append(batch[0].id)
        await finish(storage, batch[0])
    assert started == [j.id for j in jobs]


async def test_a_refused_outcome_frees_no_slot(storage: StorageBackend) -> None:
    jobs = [limited("k", 1) for _ in range(3)]
    for new in jobs:
        await storage.insert_jobs([new])
    [first] = await claim(storage)
    stale = JobOutcome(first.id, str(uuid.uuid4()), JobStatus.DONE)
    assert await storage.complete_jobs([stale]) == []
    assert await claim(storage) == []
    assert await finish(storage, first) == [first.id]
    assert await finish(storage, first) == []  # the same outcome again: refused
    assert await storage.complete_jobs([stale]) == []
    [second] = await claim(storage)
    assert second.id == jobs[1].id
    assert await claim(storage) == []


async def test_rescue_keeps_or_hands_over_the_slot(storage: StorageBackend) -> None:
    now = datetime.now(UTC)
    silent = WorkerInfo(WORKER, "host", 1, None, 4)
    await storage.register_worker(silent, now=now - timedelta(minutes=10))
    retried = [limited("r", 1) for _ in range(2)]
    last = [limited("l", 1, max_attempts=1) for _ in range(2)]
    for new in (*retried, *last):
        await storage.insert_jobs([new])
    assert {c.id for c in await claim(storage)} == {retried[0].id, last[0].id}
    assert set(await storage.rescue_jobs(60.0)) == {retried[0].id, last[0].id}
    # The retried one is queued again with its slot; the dead-lettered one handed its slot on.
    assert {c.id for c in await claim(storage)} == {retried[0].id, last[1].id}


async def test_reconcile_applies_a_raised_limit(storage: StorageBackend) -> None:
    jobs = [limited("k", 1) for _ in range(5)]
    await storage.insert_jobs(jobs)
    assert await storage.reconcile_slots({"unrelated.job": 9}) == 0
    assert await storage.reconcile_slots({NAME: 3}) == 2
    running = await claim(storage)
    assert [c.id for c in running] == [j.id for j in jobs[:3]]
    assert await storage.reconcile_slots({NAME: 3}) == 0
    # The raised limit holds from now on: a hand-over keeps 3 running.
    await finish(storage, running[0])
    assert [c.id for c in await claim(storage)] == [jobs[3].id]
    assert await claim(storage) == []


async def test_replayed_dead_letters_wait_for_the_reconciliation(
        storage: StorageBackend) -> None:
    store = storage.dead_letters
    assert store is not None
    [job] = [limited("k", 1)]
    await storage.insert_jobs([job])
    [c] = await claim(storage)
    await finish(storage, c, JobStatus.DEAD_LETTER)
    holder = limited("k", 1)
    await storage.insert_jobs([holder])
    assert await store.replay(job.id) == "default"
    [running] = await claim(storage)
    assert running.id == holder.id  # the replayed job waits (parked)
    await finish(storage, running)  # ... and gets the slot handed over
    assert [c.id for c in await claim(storage)] == [job.id]


async def test_replayed_without_a_holder_is_unparked_by_the_reconciliation(
        storage: StorageBackend) -> None:
    store = storage.dead_letters
    assert store is not None
    job = limited("k", 1)
    await storage.insert_jobs([job])
    [c] = await claim(storage)
    await finish(storage, c, JobStatus.DEAD_LETTER)
    assert await store.replay(job.id) == "default"
    assert await claim(storage) == []
    assert await storage.reconcile_slots({NAME: 1}) == 1
    assert [c.id for c in await claim(storage)] == [job.id]


async def test_park_job_gives_an_unkeyed_job_its_key(storage: StorageBackend) -> None:
    holder = limited("k", 1)
    await storage.insert_jobs([holder])
    unkeyed = limited(None)
    await storage.insert_jobs([unkeyed])
    claimed = {c.id: c for c in await claim(storage)}
    assert set(claimed) == {holder.id, unkeyed.id}
    late = claimed[unkeyed.id]
    assert late.concurrency_key is None
    assert not await storage.park_job(late.id, str(uuid.uuid4()), "k", 1)  # fenced
    assert await storage.park_job(late.id, late.lease_id, "k", 1)
    assert not await storage.park_job(late.id, late.lease_id, "k", 1)
    record = await storage.get_job(late.id)
    assert record is not None and record["status"] == "queued" and record["attempts"] == 0
    assert await claim(storage) == []  # parked behind the holder
    await finish(storage, claimed[holder.id])
    [again] = await claim(storage)
    assert again.id == late.id and again.concurrency_key == "k"


async def test_a_job_level_limit_without_key(storage: StorageBackend) -> None:
    jobs = [limited("", 2) for _ in range(3)]
    for new in jobs:
        await storage.insert_jobs([new])
    assert len(await claim(storage)) == 2
