"""The dashboard's store (``backend.dashboard``) on every backend, under asyncio and trio:
filtered listing with a cursor, per-minute rollups that never double count, storage facts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from soniq.backends.base import StorageBackend
from soniq.backends.stores import DashboardStore
from soniq.ids import new_id
from soniq.types import JobOutcome, JobStatus, NewJob

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 2, 3, 4, 0, tzinfo=UTC)


def _job(name: str, queue: str = "default") -> NewJob:
    return NewJob(id=new_id(), job_name=name, queue=queue, priority=0, args=json.dumps({}),
                  max_attempts=1, scheduled_at=T0 - timedelta(hours=1))


async def _finish(storage: StorageBackend, statuses: list[JobStatus], at: datetime,
                  queue: str = "default") -> list[str]:
    """Insert one job per status and finish them at ``at``."""
    jobs = [_job(f"job.{status.value}", queue) for status in statuses]
    await storage.insert_jobs(jobs)
    claimed = await storage.claim_jobs("0190a0a0-0000-7000-8000-00000000000a", [queue],
                                       len(jobs), now=at)
    by_id = {job.id: status for job, status in zip(jobs, statuses, strict=True)}
    outcomes = [JobOutcome(job_id=c.id, lease_id=c.lease_id, status=by_id[c.id],
                           expires_at=at + timedelta(days=1)) for c in claimed]
    assert len(await storage.complete_jobs(outcomes, now=at)) == len(jobs)
    return [job.id for job in jobs]


def _store(storage: StorageBackend) -> DashboardStore:
    store = getattr(storage, "dashboard", None)
    assert isinstance(store, DashboardStore)
    return store


async def test_search_filters_and_cursor(storage: StorageBackend) -> None:
    store = _store(storage)
    jobs = [_job("emails.send"), _job("emails.send_100%"), _job("reports.Daily", "reports"),
            _job("under_score")]
    await storage.insert_jobs(jobs)
    ids = [job.id for job in jobs]

    async def search(**filters: object) -> list[str]:
        options: dict[str, object] = {"queue": None, "status": None, "job_name": None,
                                      "since": None, "until": None, "before": None, "limit": 50,
                                      "scan_limit": 1000}
        options.update(filters)
        found = await store.search_jobs(**options)  # type: ignore[arg-type]
        assert found.scanned_to is None  # every job is within the scan limit
        return [r["id"] for r in found.jobs]

    assert await search() == ids[::-1]
    assert await search(queue="reports") == [ids[2]]
    assert await search(status="queued", queue="default") == [ids[3], ids[1], ids[0]]
    assert await search(status="done") == []
    assert await search(job_name="EMAILS") == [ids[1], ids[0]]
    assert await search(job_name="100%") == [ids[1]]
    assert await search(job_name="%") == [ids[1]]  # a literal percent sign
    assert await search(job_name="_") == [ids[3], ids[1]]  # a literal underscore
    assert await search(job_name="daily") == [ids[2]]
    assert await search(limit=2) == [ids[3], ids[2]]
    assert await search(before=ids[2], limit=2) == [ids[1], ids[0]]
    assert await search(before=ids[0]) == []
    far = datetime(2999, 1, 1, tzinfo=UTC)
    assert await search(since=far) == []
    assert await search(until=far) == ids[::-1]
    assert await search(since=datetime(2000, 1, 1, tzinfo=UTC), until=datetime(2000, 1, 2,
                                                                               tzinfo=UTC)) == []


async def test_search_reads_at_most_scan_limit_jobs_and_says_where_it_stopped(
        storage: StorageBackend) -> None:
    """A filter that matches rarely (or never) examines ``scan_limit`` jobs, not the table;
    following ``scanned_to`` finds the older matches, and no match is skipped or repeated."""
    store = _store(storage)
    jobs = [_job("needle.old")] + [_job(f"hay.{i}") for i in range(6)] + [_job("needle.new")]
    await storage.insert_jobs(jobs)
    ids = [job.id for job in jobs]
    options: dict[str, object] = {"queue": None, "status": None, "since": None, "until": None,
                                  "limit": 10, "scan_limit": 3}
    first = await store.search_jobs(job_name="needle", before=None, **options)  # type: ignore[arg-type]
    assert [r["id"] for r in first.jobs] == [ids[7]]
    assert first.scanned_to == ids[5]  # the 3rd newest: examined, no match past it yet
    found, cursor = [r["id"] for r in first.jobs], first.scanned_to
    pages = 1
    while cursor is not None:
        page = await store.search_jobs(job_name="needle", before=cursor, **options)  # type: ignore[arg-type]
        found += [r["id"] for r in page.jobs]
        cursor = page.scanned_to
        pages += 1
    assert found == [ids[7], ids[0]]
    assert pages == 3  # 8 jobs, 3 per scan
    none = await store.search_jobs(job_name="zzzz", before=None, **options)  # type: ignore[arg-type]
    assert none.jobs == [] and none.scanned_to == ids[5]
    # A page that fills within the scan limit needs no scan cursor.
    full = await store.search_jobs(job_name=None, before=None, **{**options, "limit": 2})  # type: ignore[arg-type]
    assert [r["id"] for r in full.jobs] == [ids[7], ids[6]] and full.scanned_to is None


async def test_queue_counts_exact_or_estimated(storage: StorageBackend) -> None:
    store = _store(storage)
    await _finish(storage, [JobStatus.DONE, JobStatus.DEAD_LETTER, JobStatus.CANCELLED], T0)
    await storage.insert_jobs([_job("a"), _job("b", "other")])
    exact = await store.queue_counts(exact_up_to=1_000)
    assert not exact.estimated
    assert exact.queues == await storage.queue_stats()
    if storage.name != "postgres":
        return
    # Past the threshold (by the planner's row estimate), PostgreSQL estimates done and
    # cancelled from a sample (here all of the small table) and counts the rest exactly.
    async with storage.acquire() as conn:  # type: ignore[attr-defined]
        await conn.execute("ANALYZE soniq_jobs")
    estimated = await store.queue_counts(exact_up_to=1)
    assert estimated.estimated
    assert estimated.queues == exact.queues


async def test_rollup_counts_minutes_once_and_keeps_counts_of_pruned_rows(
        storage: StorageBackend) -> None:
    store = _store(storage)
    done, dead, cancelled = JobStatus.DONE, JobStatus.DEAD_LETTER, JobStatus.CANCELLED
    await _finish(storage, [done, done, dead], T0 + timedelta(seconds=5))
    await _finish(storage, [done], T0 + timedelta(seconds=65))
    await _finish(storage, [cancelled, done], T0 + timedelta(seconds=10), queue="other")
    await store.rollup(since=T0, keep_after=T0 - timedelta(days=1))
    await store.rollup(since=T0, keep_after=T0 - timedelta(days=1))  # again: no double count
    buckets = {(b.bucket, b.queue): (b.done, b.dead_letter, b.cancelled)
               for b in await store.stats(since=T0)}
    assert buckets == {
        (T0, "default"): (2, 1, 0),
        (T0, "other"): (1, 0, 1),
        (T0 + timedelta(minutes=1), "default"): (1, 0, 0),
    }
    # Rows pruned (or replayed) after a rollup do not lower the stored counts.
    pruned = await storage.prune_jobs(now=T0 + timedelta(days=2))
    assert pruned == 5
    await store.rollup(since=T0, keep_after=T0 - timedelta(days=1))
    assert len(await store.stats(since=T0)) == 3
    assert [b.done for b in await store.stats(since=T0 + timedelta(minutes=1))] == [1]
    # Old buckets are deleted.
    await store.rollup(since=T0, keep_after=T0 + timedelta(minutes=1))
    assert [(b.bucket, b.queue) for b in await store.stats(since=T0 - timedelta(days=1))] == [
        (T0 + timedelta(minutes=1), "default")]


async def test_health_facts(storage: StorageBackend) -> None:
    await storage.insert_jobs([_job("a"), _job("b")])
    health = await _store(storage).health()
    if storage.name == "memory":
        assert health.schema_version is None and health.jobs_rows == 2
    else:
        assert health.schema_version is not None and health.schema_version >= 5
        assert health.jobs_table_bytes is not None and health.jobs_table_bytes > 0
    if storage.name == "sqlite":
        assert health.jobs_rows == 2
    if storage.name == "postgres":
        assert health.dead_tuples is not None
