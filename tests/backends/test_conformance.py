"""The storage contract, run on memory, SQLite and PostgreSQL under asyncio and trio.

Change semantics here first, then make every backend pass (DESIGN.md §3).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from soniq.backends.base import StorageBackend
from soniq.backends.stores import JobDefinition
from soniq.features.definitions import current
from soniq.ids import new_id
from soniq.serialization import dumps
from soniq.types import JobOutcome, JobStatus, NewJob, WorkerInfo

RECORD_KEYS = {
    "id", "job_name", "queue", "priority", "status", "args", "result", "attempts",
    "max_attempts", "scheduled_at", "created_at", "updated_at", "started_at", "finished_at",
    "expires_at", "errors", "last_error", "worker_id", "dedup_key", "workflow_id", "step_name",
    "progress",
}
pytestmark = pytest.mark.anyio

WORKER = "00000000-0000-7000-8000-000000000001"


def job(name: str = "tests.job", *, queue: str = "default", priority: int = 100,
        args: dict[str, object] | None = None, at: datetime | None = None,
        dedup_key: str | None = None, max_attempts: int = 4) -> NewJob:
    return NewJob(id=new_id(), job_name=name, queue=queue, priority=priority,
                  args=dumps(args or {}), max_attempts=max_attempts, scheduled_at=at,
                  dedup_key=dedup_key)


async def test_insert_and_get_round_trip(storage: StorageBackend) -> None:
    args = {"text": "héllo ✓ \U0001f600", "n": 2**53 + 1, "f": 0.1, "nested": {"a": [1, None, True]}}
    new = job(args=args, priority=7, queue="mail", max_attempts=6)
    assert await storage.insert_jobs([new]) == [new.id]
    record = await storage.get_job(new.id)
    assert record is not None
    assert set(record) == RECORD_KEYS
    assert record["id"] == new.id
    assert record["args"] == args
    assert (record["job_name"], record["queue"], record["priority"]) == ("tests.job", "mail", 7)
    assert (record["status"], record["attempts"], record["max_attempts"]) == ("queued", 0, 6)
    assert record["result"] is None and record["errors"] == [] and record["last_error"] is None
    for key in ("scheduled_at", "created_at", "updated_at"):
        value = record[key]
        assert isinstance(value, datetime) and value.utcoffset() == timedelta(0), key
    assert abs(record["created_at"] - datetime.now(UTC)) < timedelta(seconds=30)


async def test_missing_and_malformed_ids(storage: StorageBackend) -> None:
    missing = str(uuid.uuid4())
    assert await storage.get_job(missing) is None
    assert await storage.cancel_job(missing) is None
    assert await storage.delete_job(missing) is False
    for bad in ("not-a-uuid", "'; DROP TABLE soniq_jobs; --", ""):
        assert await storage.get_job(bad) is None
        assert await storage.cancel_job(bad) is None
        assert await storage.delete_job(bad) is False


async def test_insert_many_keeps_order(storage: StorageBackend) -> None:
    jobs = [job(args={"i": i}, queue=f"q{i % 3}") for i in range(250)]
    assert await storage.insert_jobs(jobs) == [j.id for j in jobs]
    records = await storage.list_jobs(limit=1000)
    assert len(records) == 250


async def test_list_jobs_filters_and_pages(storage: StorageBackend) -> None:
    jobs = [job(args={"i": i}, queue="a" if i % 2 else "b") for i in range(10)]
    await storage.insert_jobs(jobs)
    await storage.cancel_job(jobs[0].id)
    newest_first = [j.id for j in reversed(jobs)]
    assert [r["id"] for r in await storage.list_jobs()] == newest_first
    assert [r["id"] for r in await storage.list_jobs(limit=3, offset=2)] == newest_first[2:5]
    assert {r["queue"] for r in await storage.list_jobs(queue="a")} == {"a"}
    assert len(await storage.list_jobs(queue="a")) == 5
    assert [r["id"] for r in await storage.list_jobs(status="cancelled")] == [jobs[0].id]
    assert len(await storage.list_jobs(queue="b", status="queued")) == 4
    assert await storage.list_jobs(queue="nope") == []


async def test_queue_stats(storage: StorageBackend) -> None:
    assert await storage.queue_stats() == []
    await storage.insert_jobs([job(queue="zeta"), job(queue="alpha"), job(queue="alpha")])
    [claimed] = await storage.claim_jobs(WORKER, ["zeta"], 10)
    stats = await storage.queue_stats()
    assert stats == [
        {"queue": "alpha", "total": 2, "waiting": 0, "queued": 2, "processing": 0, "done": 0,
         "dead_letter": 0, "cancelled": 0},
        {"queue": "zeta", "total": 1, "waiting": 0, "queued": 0, "processing": 1, "done": 0,
         "dead_letter": 0, "cancelled": 0},
    ]
    await storage.complete_jobs([JobOutcome(claimed.id, claimed.lease_id, JobStatus.DEAD_LETTER)])
    [zeta] = [s for s in await storage.queue_stats() if s["queue"] == "zeta"]
    assert (zeta["dead_letter"], zeta["processing"], zeta["total"]) == (1, 0, 1)


async def test_dedup_key_held_while_queued(storage: StorageBackend) -> None:
    first = job(dedup_key="k1")
    assert await storage.insert_jobs([first]) == [first.id]
    again = job(dedup_key="k1", args={"other": 1})
    assert await storage.insert_jobs([again]) == [first.id]
    assert len(await storage.list_jobs()) == 1
    # Claimed: the key is released, so the same key enqueues a new job.
    [claimed] = await storage.claim_jobs(WORKER, None, 10)
    third = job(dedup_key="k1")
    assert await storage.insert_jobs([third]) == [third.id]
    # A re-queued job does not take the key back (no conflict with the waiting one).
    accepted = await storage.complete_jobs([JobOutcome(claimed.id, claimed.lease_id, JobStatus.QUEUED)])
    assert accepted == [claimed.id]
    assert await storage.insert_jobs([job(dedup_key="k1")]) == [third.id]
    # Cancelling releases it too.
    assert await storage.cancel_job(third.id) == "cancelled"
    fourth = job(dedup_key="k1")
    assert await storage.insert_jobs([fourth]) == [fourth.id]


async def test_claim_order_and_lease(storage: StorageBackend) -> None:
    now = datetime.now(UTC)
    early = job(priority=5, at=now - timedelta(minutes=5))
    late = job(priority=5, at=now - timedelta(minutes=1))
    urgent = job(priority=1)
    lazy = job(priority=200)
    fifo_a, fifo_b = job(priority=5, at=now - timedelta(minutes=1)), None
    await storage.insert_jobs([lazy, late, urgent, early, fifo_a])
    fifo_b = job(priority=5, at=fifo_a.scheduled_at)
    await storage.insert_jobs([fifo_b])
    claimed = await storage.claim_jobs(WORKER, None, 10)
    assert [c.id for c in claimed] == [urgent.id, early.id, late.id, fifo_a.id, fifo_b.id, lazy.id]
    for c in claimed:
        assert c.attempts == 1
        assert uuid.UUID(c.lease_id)
        record = await storage.get_job(c.id)
        assert record is not None
        assert record["status"] == "processing" and record["attempts"] == 1
        assert record["worker_id"] == WORKER and record["started_at"] is not None
    assert len({c.lease_id for c in claimed}) == len(claimed)
    assert await storage.claim_jobs(WORKER, None, 10) == []


async def test_claim_respects_schedule_limit_and_queues(storage: StorageBackend) -> None:
    now = datetime.now(UTC)
    future = job(at=now + timedelta(hours=1))
    due = [job(queue=q) for q in ("a", "b", "c", "a")]
    await storage.insert_jobs([future, *due])
    assert [c.id for c in await storage.claim_jobs(WORKER, ["a"], 1)] == [due[0].id]
    several = await storage.claim_jobs(WORKER, ["b", "c"], 10)
    assert {c.id for c in several} == {due[1].id, due[2].id}
    assert [c.id for c in await storage.claim_jobs(WORKER, None, 10)] == [due[3].id]
    assert await storage.claim_jobs(WORKER, None, 10) == []
    later = await storage.claim_jobs(WORKER, None, 10, now=now + timedelta(hours=2))
    assert [c.id for c in later] == [future.id]


async def test_concurrent_claims_never_share_a_job(storage: StorageBackend) -> None:
    jobs = [job(args={"i": i}) for i in range(60)]
    await storage.insert_jobs(jobs)
    seen: list[str] = []

    async def claimer(n: int) -> None:
        while batch := await storage.claim_jobs(f"00000000-0000-7000-8000-00000000000{n}", None, 7):
            seen.extend(c.id for c in batch)

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(claimer, n)
    assert sorted(seen) == sorted(j.id for j in jobs)


async def test_complete_done_is_fenced_by_lease(storage: StorageBackend) -> None:
    await storage.insert_jobs([job()])
    [c] = await storage.claim_jobs(WORKER, None, 1)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    stale = JobOutcome(c.id, str(uuid.uuid4()), JobStatus.DONE, result="1")
    assert await storage.complete_jobs([stale]) == []
    done = JobOutcome(c.id, c.lease_id, JobStatus.DONE, result=dumps({"ok": [1, 2]}), expires_at=expires)
    assert await storage.complete_jobs([done]) == [c.id]
    assert await storage.complete_jobs([done]) == []  # at most one accepted finish per lease
    record = await storage.get_job(c.id)
    assert record is not None
    assert record["status"] == "done" and record["result"] == {"ok": [1, 2]}
    assert record["finished_at"] is not None
    assert record["expires_at"] is not None
    assert abs(record["expires_at"] - expires) < timedelta(milliseconds=2)


async def test_a_stale_outcome_in_the_batch_does_not_hide_the_current_one(
        storage: StorageBackend) -> None:
    """One batch can hold two outcomes of one job with different leases: a database crash undid
    the claim of the first run (claims commit without waiting for the flush), and the same worker
    claimed and ran the job again before the first outcome could be written. The stale one is
    refused; the current one must still land (not be dropped as a repeat of the job)."""
    await storage.insert_jobs([job()])
    [c] = await storage.claim_jobs(WORKER, None, 1)
    stale = JobOutcome(c.id, str(uuid.uuid4()), JobStatus.DONE, result="1")
    current = JobOutcome(c.id, c.lease_id, JobStatus.DONE, result="2")
    assert await storage.complete_jobs([stale, current, current]) == [c.id]
    record = await storage.get_job(c.id)
    assert record is not None and (record["status"], record["result"]) == ("done", 2)


async def test_retry_snooze_and_zombie_fence(storage: StorageBackend) -> None:
    await storage.insert_jobs([job()])
    [first] = await storage.claim_jobs(WORKER, None, 1)
    error = dumps({"attempt": 1, "type": "ValueError", "message": "boom", "traceback": "tb",
                   "at": datetime.now(UTC).isoformat()})
    retry_at = datetime.now(UTC) + timedelta(seconds=30)
    retry = JobOutcome(first.id, first.lease_id, JobStatus.QUEUED, error=error, run_at=retry_at)
    assert await storage.complete_jobs([retry]) == [first.id]
    record = await storage.get_job(first.id)
    assert record is not None
    assert record["status"] == "queued" and record["attempts"] == 1
    assert record["last_error"] == "ValueError: boom"
    assert record["errors"][0]["traceback"] == "tb"
    assert record["worker_id"] is None
    assert await storage.claim_jobs(WORKER, None, 1) == []  # not due yet
    [second] = await storage.claim_jobs(WORKER, None, 1, now=retry_at + timedelta(seconds=1))
    assert second.attempts == 2 and second.lease_id != first.lease_id
    # The first attempt's owner wakes up late: its write is refused.
    zombie = JobOutcome(first.id, first.lease_id, JobStatus.DONE, result="1")
    assert await storage.complete_jobs([zombie]) == []
    # Snooze / shutdown give the attempt back.
    snooze = JobOutcome(second.id, second.lease_id, JobStatus.QUEUED, refund_attempt=True)
    assert await storage.complete_jobs([snooze]) == [second.id]
    record = await storage.get_job(first.id)
    assert record is not None and record["attempts"] == 1 and len(record["errors"]) == 1


async def test_complete_batch_of_mixed_outcomes(storage: StorageBackend) -> None:
    await storage.insert_jobs([job(args={"i": i}) for i in range(4)])
    a, b, c, d = await storage.claim_jobs(WORKER, None, 4)
    error = dumps({"attempt": 1, "type": "RuntimeError", "message": "x", "traceback": "", "at": ""})
    outcomes = [
        JobOutcome(a.id, a.lease_id, JobStatus.DONE, result="null"),
        JobOutcome(b.id, b.lease_id, JobStatus.DEAD_LETTER, error=error),
        JobOutcome(c.id, c.lease_id, JobStatus.CANCELLED),
        JobOutcome(d.id, "00000000-0000-4000-8000-000000000000", JobStatus.DONE),
    ]
    assert sorted(await storage.complete_jobs(outcomes)) == sorted([a.id, b.id, c.id])
    statuses = {r["id"]: r["status"] for r in await storage.list_jobs()}
    assert statuses == {a.id: "done", b.id: "dead_letter", c.id: "cancelled", d.id: "processing"}
    dead = await storage.get_job(b.id)
    assert dead is not None and dead["last_error"] == "RuntimeError: x"


async def test_cancel_waiting_and_running_jobs(storage: StorageBackend) -> None:
    waiting, running = job(), job(priority=1)
    await storage.insert_jobs([waiting, running])
    await storage.register_worker(WorkerInfo(WORKER, "host", 1, None, 2))
    [claimed] = await storage.claim_jobs(WORKER, None, 1)
    assert claimed.id == running.id
    assert await storage.cancel_job(waiting.id) == "cancelled"
    assert await storage.cancel_job(waiting.id) is None
    record = await storage.get_job(waiting.id)
    assert record is not None and record["status"] == "cancelled" and record["finished_at"]
    assert await storage.claim_jobs(WORKER, None, 5) == []
    # A running job gets a cancel request: its worker sees it at the next heartbeat.
    assert await storage.heartbeat(WORKER) == []
    assert await storage.cancel_job(running.id) == "requested"
    assert (await storage.get_job(running.id) or {})["status"] == "processing"
    assert await storage.heartbeat(WORKER) == [running.id]
    # A cancelled job that would go back to the queue ends cancelled instead.
    back = JobOutcome(claimed.id, claimed.lease_id, JobStatus.QUEUED, refund_attempt=True)
    assert await storage.complete_jobs([back]) == [claimed.id]
    assert (await storage.get_job(running.id) or {})["status"] == "cancelled"
    assert await storage.heartbeat(WORKER) == []


async def test_delete_in_any_state(storage: StorageBackend) -> None:
    waiting, running = job(), job(priority=1)
    await storage.insert_jobs([waiting, running])
    await storage.claim_jobs(WORKER, None, 1)
    assert await storage.delete_job(running.id) is True
    assert await storage.delete_job(waiting.id) is True
    assert await storage.delete_job(waiting.id) is False
    assert await storage.get_job(waiting.id) is None
    assert await storage.queue_stats() == []


async def test_json_is_stored_byte_exact(storage: StorageBackend) -> None:
    payload = {"deep": [[[[{"k": "v"}]]]], "empty": {}, "list": [], "neg": -0.5,
               "big": 12345678901234567890, "quote": "'\"\\", "sql": "'; DROP TABLE x; --",
               # jsonb keeps digits, not spelling: these must still come back as floats
               "floats": [1e16, -1.5e300, 1.7976931348623157e308, 1e-7, 5e-324]}
    new = job(args=payload)
    await storage.insert_jobs([new])
    record = await storage.get_job(new.id)
    assert record is not None
    assert json.dumps(record["args"], sort_keys=True) == json.dumps(payload, sort_keys=True)


async def test_workers_heartbeats_and_rescue(storage: StorageBackend) -> None:
    now = datetime.now(UTC)
    alive = WorkerInfo("00000000-0000-7000-8000-0000000000a1", "host-a", 11, ("q1", "q2"), 4)
    silent = WorkerInfo("00000000-0000-7000-8000-0000000000b2", "host-b", 22, None, 2)
    await storage.register_worker(alive)
    await storage.register_worker(silent, now=now - timedelta(minutes=10))
    workers = {w["id"]: w for w in await storage.list_workers()}
    assert set(workers) == {alive.id, silent.id}
    assert (workers[alive.id]["hostname"], workers[alive.id]["pid"]) == ("host-a", 11)
    assert list(workers[alive.id]["queues"]) == ["q1", "q2"]
    assert workers[silent.id]["queues"] is None and workers[silent.id]["concurrency"] == 2
    assert workers[silent.id]["last_heartbeat"] < workers[alive.id]["last_heartbeat"]

    last_try, retry, keep, orphan, cancelled = (job(max_attempts=1), job(), job(), job(), job())
    await storage.insert_jobs([last_try, retry, cancelled])
    claimed = await storage.claim_jobs(silent.id, None, 3)
    assert len(claimed) == 3
    await storage.cancel_job(cancelled.id)  # a request, since it is running
    await storage.insert_jobs([keep])
    [kept] = await storage.claim_jobs(alive.id, None, 1)
    await storage.insert_jobs([orphan])
    await storage.claim_jobs("00000000-0000-7000-8000-0000000000c3", None, 1)  # never registered

    rescued = await storage.rescue_jobs(60.0)
    assert sorted(rescued) == sorted([last_try.id, retry.id, cancelled.id, orphan.id])
    states = {r["id"]: (r["status"], r["attempts"]) for r in await storage.list_jobs()}
    assert states == {last_try.id: ("dead_letter", 1), retry.id: ("queued", 1),
                      cancelled.id: ("cancelled", 1), keep.id: ("processing", 1),
                      orphan.id: ("queued", 1)}
    lost = await storage.get_job(retry.id)
    assert lost is not None and lost["errors"][0]["type"] == "WorkerLost" and lost["worker_id"] is None
    assert [w["id"] for w in await storage.list_workers()] == [alive.id]
    assert await storage.rescue_jobs(60.0) == []
    # The silent worker wakes up: its lease is gone, and a heartbeat re-creates its row.
    stale = [c for c in claimed if c.id == retry.id][0]
    assert await storage.complete_jobs([JobOutcome(stale.id, stale.lease_id, JobStatus.DONE)]) == []
    assert await storage.heartbeat(silent.id) == []
    assert {w["id"] for w in await storage.list_workers()} == {alive.id, silent.id}
    await storage.unregister_worker(alive.id)
    await storage.unregister_worker(alive.id)
    assert [w["id"] for w in await storage.list_workers()] == [silent.id]
    assert kept.id == keep.id


async def test_prune_finished_jobs_past_expiry(storage: StorageBackend) -> None:
    now = datetime.now(UTC)
    jobs = [job(args={"i": i}) for i in range(4)]
    await storage.insert_jobs(jobs)
    a, b, c, d = await storage.claim_jobs(WORKER, None, 4)
    await storage.complete_jobs([
        JobOutcome(a.id, a.lease_id, JobStatus.DONE, expires_at=now - timedelta(seconds=1)),
        JobOutcome(b.id, b.lease_id, JobStatus.DONE, expires_at=now + timedelta(hours=1)),
        JobOutcome(c.id, c.lease_id, JobStatus.CANCELLED, expires_at=now - timedelta(seconds=1)),
        JobOutcome(d.id, d.lease_id, JobStatus.DEAD_LETTER),
    ])
    assert await storage.prune_jobs() == 2
    assert {r["id"] for r in await storage.list_jobs()} == {b.id, d.id}
    assert await storage.prune_jobs(now=now + timedelta(hours=2)) == 1
    assert [r["id"] for r in await storage.list_jobs()] == [d.id]  # dead letters stay


async def test_jobs_cancelled_before_they_started_go_after_result_ttl(
        storage: StorageBackend) -> None:
    """A job cancelled while queued has no expires_at: it is pruned result_ttl after it was
    cancelled (only when the caller says result_ttl), never before."""
    cancelled, kept = job(), job()
    await storage.insert_jobs([cancelled, kept])
    assert await storage.cancel_job(cancelled.id) == "cancelled"
    later = datetime.now(UTC) + timedelta(hours=1)
    assert await storage.prune_jobs(now=later) == 0  # no result_ttl: kept as before
    assert await storage.prune_jobs(now=later, result_ttl=7200) == 0  # not old enough
    assert await storage.prune_jobs(now=later, result_ttl=600) == 1
    assert [r["id"] for r in await storage.list_jobs()] == [kept.id]


async def test_maintenance_rounds_have_one_leader(storage: StorageBackend) -> None:
    now = datetime.now(UTC)
    assert await storage.claim_maintenance("cleanup", 60, now=now) is True
    assert await storage.claim_maintenance("cleanup", 60, now=now + timedelta(seconds=30)) is False
    assert await storage.claim_maintenance("other", 60, now=now) is True
    assert await storage.claim_maintenance("cleanup", 60, now=now + timedelta(seconds=61)) is True
    results: list[bool] = []

    async def contend() -> None:
        results.append(await storage.claim_maintenance("race", 60))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(contend)
    assert sorted(results) == [False] * 7 + [True]


async def test_listen_delivers_enqueues_and_cancel_requests(storage: StorageBackend) -> None:
    if not storage.supports_listen:
        pytest.skip(f"{storage.name} polls: it has no LISTEN")  # SQLite: embedded, no push channel
    received: list[tuple[str, str]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(storage.listen, lambda channel, payload: received.append((channel, payload)))
        new = job(queue="mail")
        await storage.insert_jobs([new])
        await wait_until(lambda: ("soniq_jobs", "mail") in received)
        await storage.claim_jobs(WORKER, None, 1)
        await storage.cancel_job(new.id)
        await wait_until(lambda: ("soniq_cancel", new.id) in received)
        tg.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


# -- job definitions (backend.definitions) ---------------------------------------------------
def definition(name: str = "tests.job", *, queue: str = "default", priority: int = 100,
               **options: object) -> JobDefinition:
    return JobDefinition(name=name, queue=queue, priority=priority, max_attempts=4,
                         timeout=30.0, encrypt=False, options=options)


async def test_definitions_keep_first_seen_and_move_last_seen(storage: StorageBackend) -> None:
    store = storage.definitions
    assert store is not None
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    a, other = definition(unique=True), definition("tests.other", queue="mail", priority=-5)
    await store.upsert([a, other], now=t0)
    await store.upsert([a], now=t0 + timedelta(minutes=5))
    await store.upsert([a], now=t0 + timedelta(minutes=1))  # last_seen_at never moves back
    [stored_a, stored_other] = await store.list()
    assert stored_a.definition == a and stored_a.digest == a.digest
    assert (stored_a.first_seen_at, stored_a.last_seen_at) == (t0, t0 + timedelta(minutes=5))
    assert stored_other.definition == other and stored_other.last_seen_at == t0
    assert dict(stored_a.definition.options) == {"unique": True}
    assert await store.list("tests.other") == [stored_other]
    assert await store.list("tests.none") == []
    await store.upsert([])  # nothing to write


async def test_a_deploy_is_resolved_by_first_seen(storage: StorageBackend) -> None:
    """Worker v1 stores definition A, worker v2 (the deploy) stores B: B is current. v1 restarts
    later and re-stores A: B stays current, and A's row only records that it was seen again."""
    store = storage.definitions
    assert store is not None
    a, b = definition(queue="old"), definition(queue="new")
    assert a.digest != b.digest
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    await store.upsert([a], now=t0)
    assert current(await store.list())["tests.job"].definition == a
    await store.upsert([b], now=t0 + timedelta(minutes=1))
    assert current(await store.list())["tests.job"].definition == b
    await store.upsert([a], now=t0 + timedelta(minutes=2))  # v1 restarts
    versions = await store.list("tests.job")
    assert current(versions)["tests.job"].definition == b
    assert [(v.definition.queue, v.first_seen_at, v.last_seen_at) for v in versions] == [
        ("old", t0, t0 + timedelta(minutes=2)),
        ("new", t0 + timedelta(minutes=1), t0 + timedelta(minutes=1))]


async def test_worker_rows_list_job_names_also_when_re_created(storage: StorageBackend) -> None:
    worker = WorkerInfo(WORKER, "host", 1, None, 2, job_names=("a.job", "b.job"))
    await storage.register_worker(worker)
    assert [w["job_names"] for w in await storage.list_workers()] == [["a.job", "b.job"]]
    await storage.heartbeat(WORKER, job_names=worker.job_names)
    assert [w["job_names"] for w in await storage.list_workers()] == [["a.job", "b.job"]]
    await storage.unregister_worker(WORKER)  # as the cleanup does to a silent worker
    await storage.heartbeat(WORKER, job_names=worker.job_names)
    assert [w["job_names"] for w in await storage.list_workers()] == [["a.job", "b.job"]]
