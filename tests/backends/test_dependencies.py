"""Jobs that wait for other jobs (``EnqueueOptions.depends_on``), on memory, SQLite and
PostgreSQL under asyncio and trio: a dependent is stored ``waiting`` and runs once its
dependencies are ``done``; a failed dependency applies the dependent's ``on_dependency_failure``
(``cancel``, transitively; ``run``; ``wait`` for a replay); every path that ends a job (finish,
cancel, rescue, delete) follows the fan-in protocol of ``StorageBackend.insert_jobs``, and an
edge counts once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import pytest

from soniq import EnqueueOptions, JobContext, Soniq
from soniq.backends.base import StorageBackend
from soniq.errors import ValidationError
from soniq.ids import new_id
from soniq.serialization import dumps
from soniq.types import JobOutcome, JobStatus, NewJob

pytestmark = pytest.mark.anyio

WORKER = "00000000-0000-7000-8000-0000000000d1"
LATER = datetime.now(UTC) + timedelta(days=1)


class Jobs:
    """The registered jobs, what ran (in order) and whether ``flaky`` fails."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.seen: dict[str, dict[str, Any]] = {}
        self.fail = True


def register(app: Soniq) -> Jobs:
    jobs = Jobs()

    @app.job(name="step")
    async def step(ctx: JobContext, n: int = 0) -> int:
        jobs.ran.append(ctx.job_id)
        jobs.seen[ctx.job_id] = dict(ctx.dependency_results)
        return n + sum(v for v in ctx.dependency_results.values() if isinstance(v, int))

    @app.job(name="flaky", retries=0)
    async def flaky(ctx: JobContext) -> int:
        jobs.ran.append(ctx.job_id)
        if jobs.fail:
            raise RuntimeError("flaky failed")
        return 7

    return jobs


def after(*ids: str, policy: str = "cancel") -> EnqueueOptions:
    return EnqueueOptions(depends_on=list(ids), on_dependency_failure=policy)  # type: ignore[arg-type]


async def status(app: Soniq, job_id: str) -> str:
    record = await app.get_job(job_id)
    assert record is not None
    return record["status"]


async def statuses(app: Soniq, *ids: str) -> list[str]:
    return [await status(app, job_id) for job_id in ids]


def new(*depends_on: str, policy: str | None = None, **fields: Any) -> NewJob:
    return NewJob(id=new_id(), job_name="tests.dep", queue="q", priority=100, args=dumps({}),
                  max_attempts=3, depends_on=depends_on,
                  on_dependency_failure=policy if depends_on else None, **fields)


async def finish(storage: StorageBackend, *jobs: tuple[Any, JobStatus],
                 expires_at: datetime | None = None) -> list[str]:
    return await storage.complete_jobs(
        [JobOutcome(job.id, job.lease_id, state, expires_at=expires_at) for job, state in jobs])


# -- the public API ------------------------------------------------------------------------------
async def test_a_chain_waits_and_runs_in_one_worker_run(app: Soniq) -> None:
    jobs = register(app)
    a = await app.enqueue("step", n=1)
    b = await app.enqueue("step", n=10, options=after(a))
    c = await app.enqueue("step", n=100, options=after(b))
    assert await statuses(app, a, b, c) == ["queued", "waiting", "waiting"]
    assert sorted(r["id"] for r in await app.list_jobs(status="waiting")) == sorted([b, c])
    [stats] = await app.get_queue_stats()
    assert (stats["waiting"], stats["queued"], stats["total"]) == (2, 1, 3)
    await app.run_worker(run_once=True)
    assert jobs.ran == [a, b, c]
    assert await statuses(app, a, b, c) == ["done"] * 3
    assert await app.get_result(c) == 111
    assert jobs.seen[b] == {a: 1} and jobs.seen[a] == {}


async def test_a_diamond_reads_both_results(app: Soniq) -> None:
    jobs = register(app)
    a = await app.enqueue("step", n=1)
    b = await app.enqueue("step", n=10, options=after(a))
    c = await app.enqueue("step", n=100, options=after(a))
    d = await app.enqueue("step", n=0, options=after(b, c))
    await app.run_worker(run_once=True)
    assert jobs.ran[0] == a and jobs.ran[-1] == d and len(jobs.ran) == 4
    assert jobs.seen[d] == {b: 11, c: 101}
    assert await app.get_result(d) == 112


async def test_cancel_cascades_through_cancel_dependents(app: Soniq) -> None:
    """a dead-letters: b (cancel) is cancelled, so is c (cancel, waits for b); d (run, waits for
    b) runs with None for b; e (wait, waits for b) keeps waiting."""
    jobs = register(app)
    a = await app.enqueue("flaky")
    b = await app.enqueue("step", options=after(a))
    c = await app.enqueue("step", options=after(b))
    d = await app.enqueue("step", n=3, options=after(b, policy="run"))
    e = await app.enqueue("step", options=after(b, policy="wait"))
    await app.run_worker(run_once=True)
    assert await statuses(app, a, b, c, d, e) == [
        "dead_letter", "cancelled", "cancelled", "done", "waiting"]
    assert jobs.ran == [a, d]
    assert jobs.seen[d] == {b: None}
    assert await app.get_result(d) == 3


async def test_run_receives_none_for_the_failed_dependency(app: Soniq) -> None:
    jobs = register(app)
    ok = await app.enqueue("step", n=5)
    bad = await app.enqueue("flaky")
    after_both = await app.enqueue("step", options=after(ok, bad, policy="run"))
    await app.run_worker(run_once=True)
    assert await status(app, after_both) == "done"
    assert jobs.seen[after_both] == {ok: 5, bad: None}


async def test_wait_runs_once_after_a_replay_succeeds(app: Soniq) -> None:
    jobs = register(app)
    a = await app.enqueue("flaky")
    b = await app.enqueue("step", options=after(a, policy="wait"))
    await app.run_worker(run_once=True)
    assert await statuses(app, a, b) == ["dead_letter", "waiting"]
    assert await app.dead_letter.replay(a) is True
    await app.run_worker(run_once=True)  # fails again: b keeps waiting
    assert await statuses(app, a, b) == ["dead_letter", "waiting"]
    jobs.fail = False
    assert await app.dead_letter.replay(a) is True
    await app.run_worker(run_once=True)
    assert await statuses(app, a, b) == ["done", "done"]
    assert jobs.ran == [a, a, a, b]
    assert jobs.seen[b] == {a: 7}


async def test_an_unknown_dependency_is_refused_and_nothing_is_written(app: Soniq) -> None:
    register(app)
    a = await app.enqueue("step")
    missing = new_id()
    with pytest.raises(ValidationError, match=missing):
        await app.enqueue("step", options=after(a, missing))
    with pytest.raises(ValidationError, match=missing):
        await app.enqueue_many("step", [{"n": 1}, {"n": 2}], options=after(missing))
    assert [r["id"] for r in await app.list_jobs()] == [a]


async def test_a_dependency_already_done_is_satisfied(app: Soniq) -> None:
    jobs = register(app)
    a = await app.enqueue("step", n=4)
    await app.run_worker(run_once=True)
    b = await app.enqueue("step", options=after(a))
    assert await status(app, b) == "queued"
    await app.run_worker(run_once=True)
    assert jobs.seen[b] == {a: 4}


@pytest.mark.parametrize(("policy", "expected"),
                         [("cancel", "cancelled"), ("run", "queued"), ("wait", "waiting")])
async def test_a_dependency_already_dead_applies_the_policy_at_insert(
        app: Soniq, policy: str, expected: str) -> None:
    register(app)
    a = await app.enqueue("flaky")
    await app.run_worker(run_once=True)
    b = await app.enqueue("step", options=after(a, policy=policy))
    c = await app.enqueue("step", options=after(b))  # cancels with b
    assert await status(app, b) == expected
    assert await status(app, c) == ("cancelled" if expected == "cancelled" else "waiting")


async def test_cancelling_a_waiting_job_cancels_its_cancel_dependents(app: Soniq) -> None:
    jobs = register(app)
    a = await app.enqueue("step")
    b = await app.enqueue("step", options=after(a))
    c = await app.enqueue("step", options=after(b))
    d = await app.enqueue("step", options=after(b, policy="run"))
    assert await app.cancel_job(b) is True
    assert await statuses(app, a, b, c, d) == ["queued", "cancelled", "cancelled", "queued"]
    await app.run_worker(run_once=True)
    assert sorted(jobs.ran) == sorted([a, d]) and jobs.seen[d] == {b: None}


async def test_deleting_an_unfinished_dependency_is_a_failure(app: Soniq) -> None:
    jobs = register(app)
    a = await app.enqueue("step")
    b = await app.enqueue("step", options=after(a))
    c = await app.enqueue("step", options=after(a, policy="run"))
    e = await app.enqueue("step", options=after(a, policy="wait"))
    assert await app.delete_job(a) is True
    assert await statuses(app, b, c, e) == ["cancelled", "queued", "waiting"]
    await app.run_worker(run_once=True)
    assert jobs.ran == [c] and jobs.seen[c] == {}  # a deleted one has no result to read


async def test_enqueue_many_and_a_job_argument_named_options(app: Soniq) -> None:
    seen: list[Any] = []

    @app.job(name="opts")
    async def opts(options: Any = None) -> None:
        seen.append(options)

    a = await app.enqueue("opts", options={"verbose": True})
    many = await app.enqueue_many("opts", [{"options": 1}, {"options": 2}], options=after(a))
    assert await statuses(app, *many) == ["waiting", "waiting"]
    await app.run_worker(run_once=True)
    assert seen[0] == {"verbose": True} and sorted(seen[1:]) == [1, 2]


async def test_app_sync_enqueue_with_options(app: Soniq) -> None:
    register(app)
    a = await app.enqueue("step", n=2)

    def enqueue() -> list[str]:
        return [app.sync.enqueue("step", options=after(a)),
                *app.sync.enqueue_many("step", [{"n": 1}], options=after(a))]

    try:
        ids = await anyio.to_thread.run_sync(enqueue)
    finally:
        await anyio.to_thread.run_sync(app.sync.close)
    assert await statuses(app, *ids) == ["waiting", "waiting"]
    await app.run_worker(run_once=True)
    assert await statuses(app, a, *ids) == ["done"] * 3


@pytest.mark.parametrize("options", [
    EnqueueOptions(on_dependency_failure="nope"),  # type: ignore[arg-type]
    EnqueueOptions(depends_on="not-a-list"),
    EnqueueOptions(depends_on=["not-a-uuid"]),
    EnqueueOptions(depends_on=[42]),  # type: ignore[list-item]
])
async def test_bad_options_are_refused(app: Soniq, options: EnqueueOptions) -> None:
    register(app)
    with pytest.raises(ValidationError):
        await app.enqueue("step", options=options)
    with pytest.raises(ValidationError):
        await app.enqueue_many("step", [{}], options=options)
    assert await app.list_jobs() == []


# -- the seam ------------------------------------------------------------------------------------
async def test_two_dependencies_ended_in_one_batch_release_once(storage: StorageBackend) -> None:
    a, b = new(), new()
    c = new(a.id, b.id)
    await storage.insert_jobs([c, a, b])  # a dependency later in the same call
    first = await storage.claim_jobs(WORKER, None, 10)
    assert sorted(j.id for j in first) == sorted([a.id, b.id])
    assert {j.has_dependencies for j in first} == {False}
    assert sorted(await finish(storage, *((j, JobStatus.DONE) for j in first))) == sorted(
        [a.id, b.id])
    [claimed] = await storage.claim_jobs(WORKER, None, 10)
    assert claimed.id == c.id and claimed.has_dependencies
    assert [(d.id, d.status) for d in await storage.dependency_results(c.id)] == [
        (a.id, JobStatus.DONE), (b.id, JobStatus.DONE)]
    assert await storage.claim_jobs(WORKER, None, 10) == []


async def test_prune_keeps_a_dependency_until_its_dependents_finished(
        storage: StorageBackend) -> None:
    a = new()
    b = new(a.id)
    await storage.insert_jobs([a, b])
    [claimed] = await storage.claim_jobs(WORKER, None, 10)
    past = datetime.now(UTC) - timedelta(hours=1)
    await finish(storage, (claimed, JobStatus.DONE), expires_at=past)
    assert await storage.prune_jobs(now=LATER) == 0  # b has not run yet
    [second] = await storage.claim_jobs(WORKER, None, 10)
    assert second.id == b.id
    assert await storage.prune_jobs(now=LATER) == 0  # b is running
    await finish(storage, (second, JobStatus.DONE), expires_at=past)
    assert await storage.prune_jobs(now=LATER) == 2
    assert await storage.get_job(a.id) is None


async def test_a_limited_dependent_waits_parked_then_takes_a_slot(
        storage: StorageBackend) -> None:
    a = new()
    limited = new(a.id, concurrency_key="k", concurrency_limit=1)
    await storage.insert_jobs([a, limited])
    [claimed] = await storage.claim_jobs(WORKER, None, 10)
    assert claimed.id == a.id
    await finish(storage, (claimed, JobStatus.DONE))
    record = await storage.get_job(limited.id)
    assert record is not None and record["status"] == "queued"
    if not await storage.claim_jobs(WORKER, None, 10):  # parked: the reconciliation unparks it
        assert await storage.reconcile_slots({"tests.dep": 1}) == 1
        [claimed] = await storage.claim_jobs(WORKER, None, 10)
        assert claimed.id == limited.id


async def test_a_rescued_dead_letter_settles_its_dependents(storage: StorageBackend) -> None:
    a = new()._replace(max_attempts=1)
    cancel, run = new(a.id, policy="cancel"), new(a.id, policy="run")
    await storage.insert_jobs([a, cancel, run])
    await storage.claim_jobs(WORKER, None, 10)
    assert await storage.rescue_jobs(60.0, now=LATER) == [a.id]  # the worker never registered
    assert [(await storage.get_job(j.id) or {}).get("status") for j in (a, cancel, run)] == [
        "dead_letter", "cancelled", "queued"]
