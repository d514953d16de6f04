"""``app.wait_for_job`` (and ``app.sync.wait_for_job``) on every backend, asyncio and trio: the
outcomes it returns, the timeout, unknown and deleted jobs. The PostgreSQL push (NOTIFY only
for awaited jobs, payloads within the limit, one LISTEN connection for 1,000 waiters, polling
while LISTEN is down) is in ``tests/features/test_awaiting_postgres.py``."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from soniq import EnqueueOptions, Soniq
from soniq.errors import AppClosedError, JobNotFoundError
from soniq.features.awaiting import Waiting
from soniq.ids import new_id
from soniq.types import JobContext
from tests.helpers import wait_for

pytestmark = pytest.mark.anyio


def register(app: Soniq) -> dict[str, Any]:
    @app.job()
    async def add(a: int, b: int) -> int:
        return a + b

    @app.job(retries=0)
    async def broken() -> None:
        raise ValueError("nope")

    return {"add": add, "broken": broken}


async def waiter(app: Soniq, job_id: str, into: dict[str, Any]) -> None:
    """Wait for ``job_id`` (10 s at most) and keep what came back (the record, or the error
    raised)."""
    try:
        into["job"] = await app.wait_for_job(job_id, timeout=10)
    except Exception as exc:
        into["error"] = exc


async def test_returns_the_record_with_the_decoded_result_once_done(app: Soniq) -> None:
    jobs = register(app)
    job_id = await app.enqueue(jobs["add"], a=2, b=3)
    got: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, app, job_id, got)
        await wait_for(lambda: app.awaiting.waiting == 1, message="the waiter to wait")
        assert "job" not in got  # it waits: nothing has run yet
        async with app.running_worker():
            with anyio.fail_after(10):
                while "job" not in got:
                    await anyio.sleep(0.01)
    job = got["job"]
    assert (job["id"], job["status"], job["result"]) == (job_id, "done", 5)
    assert job == {**await app.get_job(job_id), "result": await app.get_result(job_id)}
    assert app.awaiting.waiting == 0


async def test_returns_dead_letter_and_cancelled_outcomes(app: Soniq) -> None:
    jobs = register(app)
    doomed = await app.enqueue(jobs["broken"])
    queued = await app.enqueue(jobs["add"], a=1, b=1, scheduled_at=3600)
    got_doomed: dict[str, Any] = {}
    got_cancelled: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, app, doomed, got_doomed)
        tg.start_soon(waiter, app, queued, got_cancelled)
        await wait_for(lambda: app.awaiting.waiting == 2, message="both waiters")
        assert await app.cancel_job(queued)
        async with app.running_worker():
            await wait_for(lambda: "job" in got_doomed, message="the dead letter")
    assert got_cancelled["job"]["status"] == "cancelled"
    assert got_doomed["job"]["status"] == "dead_letter"
    assert got_doomed["job"]["last_error"] == "ValueError: nope"
    assert got_doomed["job"]["result"] is None


async def test_a_dependent_cancelled_with_its_failed_dependency_returns(app: Soniq) -> None:
    """The cancel comes from the dependency's end (on PostgreSQL, inside its trigger), not from
    a finish of the awaited job itself."""
    jobs = register(app)
    doomed = await app.enqueue(jobs["broken"])
    dependent = await app.enqueue(jobs["add"], a=1, b=2,
                                  options=EnqueueOptions(depends_on=[doomed]))
    got: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, app, dependent, got)
        await wait_for(lambda: app.awaiting.waiting == 1, message="the waiter to wait")
        async with app.running_worker():
            await wait_for(lambda: "job" in got, message="the dependent's end")
    assert got["job"]["status"] == "cancelled"
    assert (await app.get_job(doomed))["status"] == "dead_letter"


async def test_a_job_that_already_ended_returns_without_subscribing(app: Soniq) -> None:
    jobs = register(app)
    job_id = await app.enqueue(jobs["add"], a=20, b=22)
    assert await app.run_worker(run_once=True) == 1
    job = await app.wait_for_job(job_id)
    assert (job["status"], job["result"]) == ("done", 42)
    assert app.awaiting.subscriptions == 0 and app.awaiting.waiting == 0


async def test_times_out_with_the_builtin_timeout_error(app: Soniq) -> None:
    jobs = register(app)
    job_id = await app.enqueue(jobs["add"], a=1, b=2)  # no worker runs it
    with pytest.raises(TimeoutError):
        await app.wait_for_job(job_id, timeout=0.2)
    assert app.awaiting.waiting == 0
    assert (await app.get_job(job_id))["status"] == "queued"  # waiting changed nothing else


@pytest.mark.parametrize("job_id", ["01a25208-683e-7633-aaf5-29840ac40466", "not-a-job-id"])
async def test_an_unknown_id_raises_job_not_found(app: Soniq, job_id: str) -> None:
    with pytest.raises(JobNotFoundError, match="no job with id"):
        await app.wait_for_job(job_id, timeout=5)


async def test_a_closed_app_refuses_to_wait(app: Soniq) -> None:
    jobs = register(app)
    job_id = await app.enqueue(jobs["add"], a=1, b=2)
    await app.close()
    for wanted in (job_id, "not-a-job-id"):
        with pytest.raises(AppClosedError):
            await app.wait_for_job(wanted, timeout=5)


async def test_closing_the_app_ends_its_waiters() -> None:
    app = Soniq(backend="memory", poll_interval=60)  # a waiter would not read again for a minute
    jobs = register(app)
    job_id = await app.enqueue(jobs["add"], a=1, b=2)
    got: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, app, job_id, got)
        await wait_for(lambda: app.awaiting.waiting == 1, message="the waiter to wait")
        await app.close()
    assert isinstance(got["error"], AppClosedError)


async def test_a_job_deleted_while_awaited_raises_job_not_found(app: Soniq) -> None:
    jobs = register(app)
    job_id = await app.enqueue(jobs["add"], a=1, b=2)
    got: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, app, job_id, got)
        await wait_for(lambda: app.awaiting.waiting == 1, message="the waiter to wait")
        assert await app.delete_job(job_id)
    assert isinstance(got["error"], JobNotFoundError)
    assert app.awaiting.waiting == 0


async def test_several_waiters_of_one_job_all_return(app: Soniq) -> None:
    jobs = register(app)
    job_id = await app.enqueue(jobs["add"], a=1, b=2)
    got: list[dict[str, Any]] = [{} for _ in range(5)]
    async with anyio.create_task_group() as tg:
        for into in got:
            tg.start_soon(waiter, app, job_id, into)
        await wait_for(lambda: app.awaiting.waiting == 1, message="the waiters")
        async with app.running_worker():
            await wait_for(lambda: all("job" in into for into in got), message="every waiter")
    assert [into["job"]["result"] for into in got] == [3] * 5


async def test_sync_wait_for_job_blocks_until_the_outcome(app: Soniq) -> None:
    jobs = register(app)
    job_id = await app.enqueue(jobs["add"], a=4, b=5)
    missing = new_id()
    async with app.running_worker():
        job = await anyio.to_thread.run_sync(lambda: app.sync.wait_for_job(job_id, 10))
        with pytest.raises(JobNotFoundError):
            await anyio.to_thread.run_sync(lambda: app.sync.wait_for_job(missing, 10))
    assert (job["status"], job["result"]) == ("done", 9)
    queued = await app.enqueue(jobs["add"], a=0, b=0)
    with pytest.raises(TimeoutError):
        await anyio.to_thread.run_sync(lambda: app.sync.wait_for_job(queued, 0.2))


async def test_on_progress_gets_each_value_a_running_job_reports(app: Soniq) -> None:
    """A job reports 10, then 60 (each held until the waiter has seen it); the waiter's
    ``on_progress`` gets both, in order, before its outcome, from the stored record."""
    seen: list[Any] = []
    step = anyio.Event()

    @app.job()
    async def long(ctx: JobContext) -> str:
        await ctx.progress(10)
        await step.wait()
        await ctx.progress({"stage": "last", "pct": 60})
        with anyio.fail_after(10):
            while len(seen) < 2:
                await anyio.sleep(0.01)
        return "ok"

    async def on_progress(value: Any) -> None:
        seen.append(value)
        step.set()

    job_id = await app.enqueue(long)
    async with app.running_worker():
        job = await app.wait_for_job(job_id, timeout=20, on_progress=on_progress)
    assert (job["status"], job["result"]) == ("done", "ok")
    assert seen == [10, {"stage": "last", "pct": 60}]


async def test_waiters_poll_with_backoff_without_a_push_store() -> None:
    """With no push store (SQLite), a waiter reads again, starting after 10 ms (not after
    ``poll_interval``, 60 s here): a job that ends on the fourth read is back well before."""
    reads = 0

    async def read(job_id: str) -> Any:
        nonlocal reads
        reads += 1
        return {"id": job_id, "status": "done" if reads >= 4 else "queued", "result": 1}

    waiting = Waiting(None, read=read, decode=lambda record: "decoded", poll_interval=60.0)
    with anyio.fail_after(10):
        job = await waiting.wait("some-id")
    assert (job["status"], job["result"], reads) == ("done", "decoded", 4)
