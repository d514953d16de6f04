"""The worker runtime on every backend, under asyncio and trio."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from soniq import JobContext, Snooze, Soniq
from soniq.types import JobStatus
from tests.helpers import running_worker, wait_for, wait_for_status

pytestmark = pytest.mark.anyio


async def test_priority_then_schedule_order(app: Soniq) -> None:
    order: list[str] = []

    @app.job(name="record")
    async def record(tag: str) -> None:
        order.append(tag)

    past = datetime.now(UTC) - timedelta(minutes=1)
    await app.enqueue(record, tag="low", priority=50)
    await app.enqueue(record, tag="late", priority=10)
    await app.enqueue(record, tag="early", priority=10, scheduled_at=past)
    await app.enqueue(record, tag="urgent", priority=1)
    await app.enqueue(record, tag="future", priority=0, scheduled_at=timedelta(hours=1))
    assert await app.run_worker(concurrency=1, run_once=True) == 4
    assert order == ["urgent", "early", "late", "low"]


async def test_results_context_and_sync_jobs(app: Soniq) -> None:
    @app.job(name="info")
    async def info(x: int, ctx: JobContext) -> dict[str, object]:
        return {"x": x, "attempt": ctx.attempt, "queue": ctx.queue, "job": ctx.job_id,
                "worker": ctx.worker_id}

    @app.job(name="blocking")
    def blocking(n: int) -> int:
        assert threading.current_thread() is not threading.main_thread()
        return n * 3

    info_id = await app.enqueue(info, x=5, queue="special")
    sync_id = await app.enqueue(blocking, n=7)
    worker = app.worker(run_once=True)
    await worker.run()
    result = await app.get_result(info_id)
    assert result == {"x": 5, "attempt": 1, "queue": "special", "job": info_id, "worker": worker.id}
    assert await app.get_result(sync_id) == 21
    record = await app.get_job(info_id)
    assert record is not None and record["status"] == "done" and record["finished_at"] is not None


async def test_retries_use_configured_delays_then_dead_letter(app: Soniq) -> None:
    @app.job(name="flaky", retries=2, retry_delay=[0.2, 0.4])
    async def flaky() -> None:
        raise ValueError("always")

    job_id = await app.enqueue(flaky)
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "dead_letter")
    assert record["attempts"] == 3
    errors = record["errors"]
    assert [e["type"] for e in errors] == ["ValueError"] * 3
    assert [e["attempt"] for e in errors] == [1, 2, 3]
    assert "Traceback" in errors[0]["traceback"] and "always" in errors[0]["traceback"]
    at = [datetime.fromisoformat(e["at"]) for e in errors]
    assert at[1] - at[0] >= timedelta(seconds=0.2)
    assert at[2] - at[1] >= timedelta(seconds=0.4)
    assert record["last_error"] == "ValueError: always"


async def test_async_timeout_is_enforced_by_the_cancel_scope(app: Soniq) -> None:
    @app.job(name="sleepy", timeout=0.2, retries=0)
    async def sleepy() -> None:
        await anyio.sleep(30)

    job_id = await app.enqueue(sleepy)
    started = time.monotonic()
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "dead_letter", timeout=5)
    assert time.monotonic() - started < 5
    assert record["errors"][0]["type"] == "TimeoutError"
    assert "0.2s" in record["errors"][0]["message"]


async def test_job_timeout_setting_and_zero_disables(backend_name: str, database_url: str | None) -> None:
    app = Soniq(database_url=database_url, backend=None if database_url else backend_name,
                job_timeout=0.2, poll_interval=0.05)

    @app.job(name="inherits", retries=0)
    async def inherits() -> None:
        await anyio.sleep(30)

    @app.job(name="unbounded", timeout=0)
    async def unbounded() -> str:
        await anyio.sleep(0.4)
        return "finished"

    a = await app.enqueue(inherits)
    b = await app.enqueue(unbounded)
    async with running_worker(app):
        assert (await wait_for_status(app, a, "dead_letter"))["errors"][0]["type"] == "TimeoutError"
        await wait_for_status(app, b, "done")
    assert await app.get_result(b) == "finished"
    await app.close()


async def test_sync_timeout_is_reported_and_the_slot_stays_busy(app: Soniq) -> None:
    release = threading.Event()

    @app.job(name="stuck", timeout=0.1, retries=0)
    def stuck() -> str:
        release.wait(10)
        return "late"

    @app.job(name="quick")
    async def quick() -> str:
        return "ok"

    stuck_id = await app.enqueue(stuck)
    async with running_worker(app, concurrency=1) as worker:
        record = await wait_for_status(app, stuck_id, "dead_letter")
        assert record["errors"][0]["type"] == "TimeoutError"
        assert worker.executor.stuck == 1
        assert worker.fetcher.free_slots == 0  # the only slot is held by the stuck thread
        quick_id = await app.enqueue(quick)
        assert (await app.get_job(quick_id) or {}).get("status") == "queued"
        release.set()
        await wait_for_status(app, quick_id, "done")
        assert worker.executor.stuck == 0
    final = await app.get_job(stuck_id)
    assert final is not None and final["status"] == "dead_letter" and final["result"] is None


async def test_snooze_does_not_use_an_attempt(app: Soniq) -> None:
    @app.job(name="sleeper")
    async def sleeper(ctx: JobContext) -> object:
        if not hasattr(sleeper, "snoozed"):
            sleeper.snoozed = True  # type: ignore[attr-defined]
            return Snooze(0.1)
        return ctx.attempt

    job_id = await app.enqueue(sleeper)
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "done")
    assert record["attempts"] == 1 and record["result"] == 1 and record["errors"] == []


async def test_hooks_and_middleware_order(app: Soniq) -> None:
    calls: list[str] = []

    @app.before_job
    def before(ctx: JobContext) -> None:
        calls.append(f"before:{ctx.job_name}")

    @app.after_job
    async def after(ctx: JobContext, result: object) -> None:
        calls.append(f"after:{result}")

    @app.on_error
    def on_error(ctx: JobContext, exc: Exception) -> None:
        calls.append(f"error:{exc}")

    @app.middleware
    async def outer(ctx: JobContext, call_next):  # type: ignore[no-untyped-def]
        calls.append("outer-in")
        result = await call_next()
        calls.append("outer-out")
        return result

    @app.middleware
    async def inner(ctx: JobContext, call_next):  # type: ignore[no-untyped-def]
        calls.append("inner-in")
        result = await call_next()
        calls.append("inner-out")
        return result * 10

    @app.job(name="work")
    async def work() -> int:
        calls.append("job")
        return 4

    @app.job(name="broken", retries=0)
    async def broken() -> None:
        raise RuntimeError("bad")

    ok = await app.enqueue(work)
    await app.run_worker(run_once=True)
    assert calls == ["before:work", "outer-in", "inner-in", "job", "inner-out", "outer-out", "after:40"]
    assert await app.get_result(ok) == 40
    calls.clear()
    await app.enqueue(broken)
    await app.run_worker(run_once=True)
    assert calls == ["before:broken", "outer-in", "inner-in", "error:bad"]


async def test_cancel_a_running_job(app: Soniq) -> None:
    started = anyio.Event()

    @app.job(name="long")
    async def long() -> None:
        started.set()
        await anyio.sleep(60)

    job_id = await app.enqueue(long)
    async with running_worker(app):
        await started.wait()
        assert await app.cancel_job(job_id) is False  # running: a request, not cancelled yet
        assert await app.request_cancel(job_id) == "requested"
        record = await wait_for_status(app, job_id, "cancelled")
    assert record["attempts"] == 1 and record["errors"] == []


async def test_graceful_stop_gives_unfinished_jobs_back_without_an_attempt(
        backend_name: str, database_url: str | None) -> None:
    app = Soniq(database_url=database_url, backend=None if database_url else backend_name,
                shutdown_timeout=0.2, poll_interval=0.05)
    started = anyio.Event()

    @app.job(name="slow")
    async def slow() -> None:
        started.set()
        await anyio.sleep(60)

    @app.job(name="fast")
    async def fast() -> str:
        await started.wait()
        await anyio.sleep(0.05)
        return "ok"

    slow_id = await app.enqueue(slow)
    fast_id = await app.enqueue(fast)
    async with anyio.create_task_group() as tg:
        worker = await tg.start(app.worker(concurrency=2).run)
        await started.wait()
        await wait_for(lambda: len(app.producer.workers) == 1)
        for w in app.producer.workers:
            assert w.id == worker
            w.stop()
    assert (await app.get_job(fast_id) or {})["status"] == "done"
    slow_record = await app.get_job(slow_id)
    assert slow_record is not None
    assert (slow_record["status"], slow_record["attempts"]) == ("queued", 0)
    await app.close()


async def test_outer_cancellation_requeues_without_an_attempt(app: Soniq) -> None:
    started = anyio.Event()

    @app.job(name="slow")
    async def slow() -> None:
        started.set()
        await anyio.sleep(60)

    job_id = await app.enqueue(slow)
    async with anyio.create_task_group() as tg:
        await tg.start(app.worker().run)
        await started.wait()
        tg.cancel_scope.cancel()
    record = await app.get_job(job_id)
    assert record is not None and (record["status"], record["attempts"]) == ("queued", 0)
    assert await app.backend.list_workers() == []


async def test_result_ttl_pruning(backend_name: str, database_url: str | None) -> None:
    app = Soniq(database_url=database_url, backend=None if database_url else backend_name,
                result_ttl=0)

    @app.job(name="noop")
    async def noop() -> None: ...

    job_id = await app.enqueue(noop)
    worker = app.worker(run_once=True)
    await worker.run()
    assert (await app.get_job(job_id) or {})["status"] == "done"
    assert await worker.cleanup.tick() == ([], 1)
    assert await app.get_job(job_id) is None
    assert await worker.cleanup.tick() is None  # another round within the interval: skipped
    await app.close()


async def test_rescue_and_zombie_fence(app: Soniq) -> None:
    """A worker goes silent mid-job; cleanup gives the job back; the stale owner cannot finish it."""
    from soniq.types import JobOutcome, WorkerInfo

    @app.job(name="task")
    async def task() -> str:
        return "second run"

    job_id = await app.enqueue(task)
    backend = app.backend
    zombie = WorkerInfo("00000000-0000-7000-8000-00000000dead", "h", 1, None, 1)
    # Its last heartbeat was an hour ago.
    await backend.register_worker(zombie, now=datetime.now(UTC) - timedelta(hours=1))
    [claimed] = await backend.claim_jobs(zombie.id, None, 1)
    assert await backend.rescue_jobs(app.settings.heartbeat_timeout) == [job_id]
    assert await backend.list_workers() == []
    record = await app.get_job(job_id)
    assert record is not None
    assert (record["status"], record["attempts"]) == ("queued", 1)
    assert record["errors"][0]["type"] == "WorkerLost"
    await app.run_worker(run_once=True)
    assert await app.get_result(job_id) == "second run"
    late = JobOutcome(job_id, claimed.lease_id, JobStatus.DONE, result='"zombie"')
    assert await backend.complete_jobs([late]) == []
    assert await app.get_result(job_id) == "second run"


async def test_poison_job_exhausts_attempts_through_rescues(app: Soniq) -> None:
    from soniq.types import WorkerInfo

    @app.job(name="poison", retries=1)
    async def poison() -> None: ...

    job_id = await app.enqueue(poison)
    backend = app.backend
    for n in range(2):
        dead = WorkerInfo(f"00000000-0000-7000-8000-00000000000{n}", "h", n, None, 1)
        await backend.register_worker(dead, now=datetime.now(UTC) - timedelta(hours=1))
        assert len(await backend.claim_jobs(dead.id, None, 1)) == 1
        assert await backend.rescue_jobs(60.0) == [job_id]
    record = await app.get_job(job_id)
    assert record is not None
    assert (record["status"], record["attempts"]) == ("dead_letter", 2)
    assert [e["type"] for e in record["errors"]] == ["WorkerLost", "WorkerLost"]


async def test_queue_filter(app: Soniq) -> None:
    ran: list[str] = []

    @app.job(name="tag")
    async def tag(q: str) -> None:
        ran.append(q)

    for q in ("a", "b", "c"):
        await app.enqueue(tag, q=q, queue=q)
    await app.run_worker(run_once=True, queues=["a", "c"])
    assert sorted(ran) == ["a", "c"]
    assert [s["queued"] for s in await app.get_queue_stats()] == [0, 1, 0]


async def test_many_jobs_each_run_once(app: Soniq) -> None:
    counts: dict[int, int] = {}

    @app.job(name="count")
    async def count(i: int) -> None:
        counts[i] = counts.get(i, 0) + 1

    await app.enqueue_many(count, [{"i": i} for i in range(200)])
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(app.run_worker, 5, True)
    assert counts == dict.fromkeys(range(200), 1)
    assert [s["done"] for s in await app.get_queue_stats()] == [200]


async def test_runners_wait_for_the_next_claim_instead_of_a_task_per_job(app: Soniq) -> None:
    """Between waves of jobs the look-ahead runs dry; the runner tasks park and take the next
    wave's jobs, so no more tasks than slots ever run jobs, and stopping wakes the parked ones."""
    tasks: set[int] = set()
    done: list[int] = []

    @app.job(name="where")
    async def where(i: int) -> None:
        tasks.add(anyio.get_current_task().id)
        done.append(i)

    async with running_worker(app, concurrency=3):
        for wave in range(5):
            await app.enqueue_many(where, [{"i": 10 * wave + k} for k in range(6)])
            await wait_for(lambda wave=wave: len(done) == 6 * (wave + 1),
                           message=f"wave {wave} to run")
    assert sorted(done) == [10 * wave + k for wave in range(5) for k in range(6)]
    assert 1 <= len(tasks) <= 3, tasks


async def test_a_runner_cancelled_as_a_claim_hands_it_a_job_gives_the_job_back(
        app: Soniq, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's task group is cancelled from outside (not ``stop()``) while a claim is on its
    way, and the claim then hands a job to the parked runner: the runner never starts it, and
    the job is back in the queue with its attempt refunded, not left processing until rescue."""
    done: list[int] = []

    @app.job(name="mark")
    async def mark(i: int) -> None:
        done.append(i)

    async with anyio.create_task_group() as tg:
        claim = app.backend.claim_jobs

        async def claim_then_cancel(*args: object, **kwargs: object) -> object:
            claimed = await claim(*args, **kwargs)  # type: ignore[arg-type]
            # Whichever claim takes the second job (an idle worker claims every poll, so one
            # may be on its way when it is enqueued), not just the first after it was enqueued.
            if any(json.loads(job.args) == {"i": 2} for job in claimed):
                tg.cancel_scope.cancel()  # lands before the fetcher hands the job over
            return claimed

        monkeypatch.setattr(app.backend, "claim_jobs", claim_then_cancel)
        worker = app.worker(concurrency=1)
        await tg.start(worker.run)
        await app.enqueue(mark, i=1)
        await wait_for(lambda: done == [1] and len(worker.fetcher._parked) == 1,
                       message="the runner to finish its job and park")
        second = await app.enqueue(mark, i=2)
        await anyio.sleep_forever()  # until the claim cancels the group
    assert done == [1]
    record = await app.get_job(second)
    assert record is not None and (record["status"], record["attempts"]) == ("queued", 0)


async def test_events_follow_the_job_lifecycle(app: Soniq) -> None:
    seen: list[tuple[str, int]] = []
    app.events.subscribe(lambda event: seen.append((event.kind, event.attempt)))

    @app.job(name="flaky", retries=1)
    async def flaky() -> None:
        if len(seen) < 3:
            raise RuntimeError("first time")

    job_id = await app.enqueue(flaky)
    async with running_worker(app):
        await wait_for_status(app, job_id, "done")
    assert seen == [("enqueued", 0), ("started", 1), ("failed", 1), ("started", 2), ("done", 2)]


async def test_look_ahead_waits_for_a_slot_goes_back_on_stop_and_honours_cancel(app: Soniq) -> None:
    """Jobs claimed ahead (look-ahead) never run beyond ``concurrency``; a cancel that arrives
    while one waits ends it without running it; stop() gives the rest back without an attempt."""
    release = anyio.Event()
    ran: list[str] = []

    @app.job(name="hold")
    async def hold() -> None:
        ran.append("hold")
        await release.wait()

    @app.job(name="quick")
    async def quick(tag: str) -> None:
        ran.append(tag)

    hold_id = await app.enqueue(hold, priority=0)
    cancelled_id = await app.enqueue(quick, tag="cancelled", priority=1)
    returned_id = await app.enqueue(quick, tag="returned", priority=2)
    untouched_id = await app.enqueue(quick, tag="untouched", priority=3)
    async with anyio.create_task_group() as tg:
        worker = app.worker(concurrency=1)
        worker.fetcher._pace.lookahead = lambda concurrency: 2  # type: ignore[method-assign]
        await tg.start(worker.run)
        # One slot: "hold" runs, the next two wait in the look-ahead, claimed (attempt counted).
        for job_id in (cancelled_id, returned_id):
            record = await wait_for_status(app, job_id, "processing")
            assert record["attempts"] == 1
        await wait_for(lambda: ran == ["hold"], message="the first job to start")
        assert await app.request_cancel(cancelled_id) == "requested"
        await wait_for(lambda: worker.executor.running[cancelled_id].cancel_requested,
                       message="the cancel request to reach the worker")
        worker.stop()
        returned = await wait_for_status(app, returned_id, "queued")
        assert returned["attempts"] == 0  # given back at once, while "hold" still runs
        assert ran == ["hold"]
        release.set()
    assert (await wait_for_status(app, hold_id, "done"))["attempts"] == 1
    cancelled = await wait_for_status(app, cancelled_id, "cancelled")
    assert ran == ["hold"]  # the cancelled job never ran
    assert cancelled["errors"] == []
    untouched = await app.get_job(untouched_id)
    assert untouched is not None and (untouched["status"], untouched["attempts"]) == ("queued", 0)


async def test_a_rate_limited_backlog_is_claimed_as_tokens_come(backend_name: str,
                                                                database_url: str | None) -> None:
    """A backlog beyond the bucket starts as tokens come back, not at the next poll: with
    ``poll_interval=30`` and ``rate_limit="20/s"``, 30 jobs finish within the deadline (the 10
    beyond the first 20 need about half a second of tokens; the poll would take 30 s)."""
    app = Soniq(database_url=database_url, backend=None if database_url else backend_name,
                poll_interval=30)

    @app.job(name="metered", rate_limit="20/s")
    async def metered() -> None: ...

    ids = await app.enqueue_many(metered, [{} for _ in range(30)])
    async with running_worker(app, concurrency=4):
        await wait_for(lambda: _all_done(app, ids), timeout=10)
    await app.close()


async def _all_done(app: Soniq, ids: list[str]) -> bool:
    for job_id in ids:
        if (await app.get_job(job_id) or {}).get("status") != "done":
            return False
    return True


async def test_gated_claims_rest_while_nothing_limited_can_start() -> None:
    """A worker that registered a rate-limited job but has only plain work tries the gated
    claim at most about once per GATE_REST (it rests after a gated claim took nothing), not on
    every claim of its plain work."""
    from soniq.runtime.fetcher import GATE_REST

    app = Soniq(backend="memory", poll_interval=0.05)

    @app.job(name="metered", rate_limit="1000/s")
    async def metered() -> None: ...

    @app.job(name="plain")
    async def plain() -> None:
        await anyio.lowlevel.checkpoint()

    backend = app.backend
    real = backend.claim_jobs
    calls: list[bool] = []

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("rates")))
        return await real(*args, **kwargs)

    backend.claim_jobs = counting  # type: ignore[method-assign]
    ids = await app.enqueue_many(plain, [{} for _ in range(3_000)])
    started = anyio.current_time()
    async with running_worker(app, concurrency=2):
        await wait_for(lambda: _all_done(app, ids[-1:]), timeout=30)
    elapsed = anyio.current_time() - started
    await app.close()
    gated = sum(calls)
    assert gated >= 1
    assert gated <= 2 + elapsed / GATE_REST, (gated, len(calls), elapsed)
    assert len(calls) - gated > gated  # most claims were plain only
