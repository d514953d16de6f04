"""The recurring-job scheduler (``app.scheduler``, ``@app.periodic``) on every backend, under
asyncio and trio. Time is injected (``scheduler.clock``, ``service.tick(now=...)``): nothing
waits for a cron minute, except the end-to-end worker tests (``every=1``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from soniq import Soniq
from soniq.backends.memory import MemoryBackend
from soniq.errors import (
    InvalidNameError,
    JobArgumentsError,
    SerializationError,
    UnknownJobError,
    ValidationError,
)
from soniq.features.scheduler import (
    DUE_BATCH,
    Scheduler,
    SchedulerService,
    Timing,
    run_scheduler,
)
from tests.helpers import running_worker, wait_for

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 5, 12, 0, 7, 250_000, tzinfo=UTC)  # a Monday, mid-minute
BERLIN = "Europe/Berlin"


def register(app: Soniq) -> list[int]:
    """Jobs the schedules enqueue; ``ran`` collects what ``report`` ran with."""
    ran: list[int] = []

    @app.job(name="report")
    async def report(n: int = 0) -> int:
        ran.append(n)
        return n

    @app.job(name="other", queue="slow", priority=5)
    async def other() -> None:
        return None

    return ran


def fixed(app: Soniq, now: datetime = NOW) -> SchedulerService:
    """Freeze the app's scheduler clock at ``now``; a fresh service to tick by hand."""
    app.scheduler.clock = lambda: now
    return app.scheduler.service()


async def jobs_named(app: Soniq, name: str) -> list[dict[str, Any]]:
    return [dict(job) for job in await app.list_jobs(limit=1000) if job["job_name"] == name]


# -- the API --------------------------------------------------------------------------------------
async def test_touching_the_property_initialises_nothing() -> None:
    app = Soniq(backend="memory")
    scheduler = app.scheduler
    assert isinstance(scheduler, Scheduler) and app.scheduler is scheduler
    assert [type(s) for s in app.services if isinstance(s, SchedulerService)] == [SchedulerService]
    assert not app.is_initialized
    assert await scheduler.list() == []
    assert app.is_initialized
    await app.close()


async def test_add_get_list_remove(app: Soniq) -> None:
    register(app)
    service = fixed(app)
    every = await app.scheduler.add("report", every=30, args={"n": 1})
    assert every["job_name"] == "report" and every["every"] == 30.0 and every["cron"] is None
    assert every["args"] == {"n": 1} and every["timezone"] == "UTC"
    assert every["queue"] is None and every["priority"] is None and every["paused"] is False
    assert every["next_run_at"] == NOW + timedelta(seconds=30) and every["last_run_at"] is None
    cron = await app.scheduler.add("nightly", cron="0 3 * * *", target="other", queue="q1",
                                   priority=7, timezone=BERLIN)
    assert cron["job_name"] == "other" and cron["cron"] == "0 3 * * *" and cron["every"] is None
    assert cron["next_run_at"] == datetime(2026, 1, 6, 2, 0, tzinfo=UTC)  # 03:00 CET
    assert (cron["queue"], cron["priority"], cron["timezone"]) == ("q1", 7, BERLIN)
    assert await app.scheduler.get("report") == every
    assert [s["name"] for s in await app.scheduler.list()] == ["nightly", "report"]
    assert await app.scheduler.get("missing") is None
    assert await app.scheduler.get("not a name!") is None
    assert await app.scheduler.remove("nightly") is True
    assert await app.scheduler.remove("nightly") is False
    assert [s["name"] for s in await app.scheduler.list()] == ["report"]
    assert await service.tick(now=NOW) == []


async def test_add_replaces_and_keeps_state(app: Soniq) -> None:
    register(app)
    service = fixed(app)
    first = await app.scheduler.add("report", every=30, args={"n": 1})
    fire_at = first["next_run_at"]
    assert len(await service.tick(now=fire_at)) == 1
    await app.scheduler.pause("report")
    app.scheduler.clock = lambda: NOW + timedelta(hours=1)
    same_timing = await app.scheduler.add("report", every=30, args={"n": 2})
    assert same_timing["args"] == {"n": 2} and same_timing["paused"] is True
    assert same_timing["last_run_at"] == fire_at
    assert same_timing["next_run_at"] == fire_at + timedelta(seconds=30)  # timing unchanged: kept
    new_timing = await app.scheduler.add("report", every=60)
    assert new_timing["next_run_at"] == NOW + timedelta(hours=1, seconds=60)
    assert new_timing["last_run_at"] == fire_at and new_timing["args"] == {}
    assert new_timing["created_at"] == first["created_at"]


async def test_pause_and_resume(app: Soniq) -> None:
    register(app)
    service = fixed(app)
    added = await app.scheduler.add("report", every=10)
    assert await app.scheduler.pause("report") is True
    assert (await app.scheduler.get("report") or {})["paused"] is True
    assert await service.tick(now=added["next_run_at"]) == []
    assert await app.scheduler.resume("report") is True
    assert len(await service.tick(now=added["next_run_at"])) == 1
    assert await app.scheduler.pause("missing") is False
    assert await app.scheduler.resume("missing") is False


async def test_validation_errors() -> None:
    app = Soniq(backend="memory")
    register(app)
    scheduler = app.scheduler
    with pytest.raises(ValidationError, match="exactly one of cron"):
        await scheduler.add("report")
    with pytest.raises(ValidationError, match="got both"):
        await scheduler.add("report", cron="* * * * *", every=5)
    with pytest.raises(ValidationError, match="invalid cron expression"):
        await scheduler.add("report", cron="61 * * * *")
    with pytest.raises(ValidationError, match="five fields"):
        await scheduler.add("report", cron="*/5 * * * * *")  # croniter's seconds field
    with pytest.raises(ValidationError, match="never matches|no next time"):
        await scheduler.add("report", cron="0 0 31 2 *")
    with pytest.raises(ValidationError, match="unknown timezone"):
        await scheduler.add("report", every=5, timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="at least 1 second"):
        await scheduler.add("report", every=0.5)
    with pytest.raises(ValidationError, match="at least 1 second"):
        await scheduler.add("report", every=timedelta(0))
    with pytest.raises(ValidationError, match="at most"):
        await scheduler.add("report", every=1e12)
    with pytest.raises(ValidationError, match="number of seconds"):
        await scheduler.add("report", every="5")  # type: ignore[arg-type]
    with pytest.raises(UnknownJobError, match="nope"):
        await scheduler.add("nope", every=5)
    with pytest.raises(UnknownJobError):
        await scheduler.add("x", every=5, target=lambda: None)
    with pytest.raises(JobArgumentsError):
        await scheduler.add("report", every=5, args={"unexpected": 1})
    with pytest.raises(SerializationError):
        await scheduler.add("report", every=5, args={"n": object()})
    with pytest.raises(InvalidNameError):
        await scheduler.add("bad name", every=5, target="report")
    with pytest.raises(InvalidNameError):
        await scheduler.add("report", every=5, queue="bad queue")
    with pytest.raises(ValidationError, match="priority"):
        await scheduler.add("report", every=5, priority=10**6)
    with pytest.raises(ValidationError, match="exactly one of cron"):
        app.periodic(name="p")
    with pytest.raises(ValidationError, match="invalid cron"):
        app.periodic(cron="nope", name="p")
    assert not app.is_initialized  # nothing reached storage
    assert await scheduler.list() == []
    await app.close()


# -- firing ---------------------------------------------------------------------------------------
async def test_every_fires_on_a_fixed_grid(app: Soniq) -> None:
    register(app)
    service = fixed(app)
    first = (await app.scheduler.add("report", every=10, args={"n": 3}))["next_run_at"]
    assert await service.tick(now=first - timedelta(microseconds=1)) == []
    [job_id] = await service.tick(now=first + timedelta(seconds=0.7))  # a late tick
    job = await app.get_job(job_id)
    assert job is not None and job["job_name"] == "report" and job["args"] == {"n": 3}
    assert job["queue"] == "default" and job["priority"] == app.settings.priority
    state = await app.scheduler.get("report")
    assert state is not None and state["last_run_at"] == first
    assert state["next_run_at"] == first + timedelta(seconds=10)  # no drift from the late tick
    assert await service.tick(now=first + timedelta(seconds=0.7)) == []
    assert len(await service.tick(now=first + timedelta(seconds=10))) == 1
    assert len(await jobs_named(app, "report")) == 2


async def test_cron_fires_with_next_and_last_time(app: Soniq) -> None:
    register(app)
    service = fixed(app)
    added = await app.scheduler.add("other", cron="*/5 * * * *", queue="fast", priority=1)
    due = datetime(2026, 1, 5, 12, 5, tzinfo=UTC)
    assert added["next_run_at"] == due
    [job_id] = await service.tick(now=due + timedelta(seconds=1))
    job = await app.get_job(job_id)
    assert job is not None and (job["queue"], job["priority"]) == ("fast", 1)
    state = await app.scheduler.get("other")
    assert state is not None
    assert (state["last_run_at"], state["next_run_at"]) == (due, due + timedelta(minutes=5))


async def test_job_defaults_apply_when_the_schedule_sets_none(app: Soniq) -> None:
    register(app)
    service = fixed(app)
    added = await app.scheduler.add("other", cron="* * * * *")
    [job_id] = await service.tick(now=added["next_run_at"])
    job = await app.get_job(job_id)
    assert job is not None and (job["queue"], job["priority"]) == ("slow", 5)


@asynccontextmanager
async def sharing(app: Soniq, backend_name: str, database_url: str | None,
                  count: int) -> AsyncIterator[list[Soniq]]:
    """``count`` more apps on the same database as ``app`` (memory: the same backend object)."""
    apps = [
        Soniq(backend=app.backend) if backend_name == "memory" else Soniq(database_url=database_url)
        for _ in range(count)
    ]
    for other in apps:
        register(other)
    try:
        yield apps
    finally:
        for other in apps:
            await other.close()


async def test_many_schedulers_fire_each_time_exactly_once(app: Soniq, backend_name: str,
                                                           database_url: str | None) -> None:
    register(app)
    first = (await app.scheduler.add("report", every=60))["next_run_at"]
    async with sharing(app, backend_name, database_url, 3) as apps:
        services = [other.scheduler.service() for other in apps]
        fired: list[str] = []

        async def tick(service: SchedulerService, now: datetime) -> None:
            fired.extend(await service.tick(now=now))

        for minute in range(4):
            now = first + timedelta(minutes=minute, seconds=1)
            async with anyio.create_task_group() as tg:
                for service in services:
                    for _ in range(2):  # each worker ticks twice in the same instant
                        tg.start_soon(tick, service, now)
        assert len(fired) == len(set(fired)) == 4
    jobs = await jobs_named(app, "report")
    assert sorted(job["id"] for job in jobs) == sorted(fired)
    state = await app.scheduler.get("report")
    assert state is not None and state["last_run_at"] == first + timedelta(minutes=3)
    if backend_name == "memory":
        assert app.backend.schedules.fired("report") == [  # type: ignore[attr-defined]
            first + timedelta(minutes=minute) for minute in range(4)]


async def test_a_pause_elsewhere_is_seen_on_the_next_tick(app: Soniq, backend_name: str,
                                                           database_url: str | None) -> None:
    register(app)
    service = fixed(app)
    first = (await app.scheduler.add("report", every=60))["next_run_at"]
    assert len(await service.tick(now=first)) == 1
    async with sharing(app, backend_name, database_url, 1) as [other]:
        assert await other.scheduler.pause("report") is True
        assert await service.tick(now=first + timedelta(minutes=1)) == []
        assert await other.scheduler.resume("report") is True
        assert len(await service.tick(now=first + timedelta(minutes=1))) == 1
        assert await other.scheduler.remove("report") is True
        assert await service.tick(now=first + timedelta(minutes=2)) == []
    assert len(await jobs_named(app, "report")) == 2


async def test_misfire_skip_waits_for_the_next_future_time(app: Soniq) -> None:
    register(app)
    service = fixed(app)
    first = (await app.scheduler.add("report", every=3600))["next_run_at"]
    back = first + timedelta(hours=3, minutes=10)  # three times missed, none within the grace
    assert app.scheduler.misfire == "skip"
    assert await service.tick(now=back) == []
    state = await app.scheduler.get("report")
    assert state is not None and state["last_run_at"] is None
    assert state["next_run_at"] == first + timedelta(hours=4)
    assert await jobs_named(app, "report") == []
    # Late by less than the grace period: that time still fires (once), the older ones do not.
    assert len(await service.tick(now=first + timedelta(hours=4, seconds=30))) == 1


async def test_misfire_catch_up_once_fires_one_job(app: Soniq) -> None:
    register(app)
    service = fixed(app)
    app.scheduler.misfire = "catch_up_once"
    first = (await app.scheduler.add("report", every=3600))["next_run_at"]
    back = first + timedelta(hours=3, minutes=10)
    assert len(await service.tick(now=back)) == 1
    assert await service.tick(now=back) == []
    state = await app.scheduler.get("report")
    assert state is not None and state["last_run_at"] == first
    assert state["next_run_at"] == first + timedelta(hours=4)
    assert len(await jobs_named(app, "report")) == 1


def test_misfire_plans_without_walking_a_long_grid() -> None:
    timing = Timing.parse(every=1)
    start = utc(2026, 1, 1)
    day_later = start + timedelta(days=1, microseconds=500)
    grace = timedelta(days=2)
    assert timing.plan(start, day_later, misfire="skip", grace=grace) == (
        start + timedelta(days=1), start + timedelta(days=1, seconds=1))
    assert timing.plan(start, day_later, misfire="skip", grace=timedelta(seconds=60)) == (
        start + timedelta(days=1), start + timedelta(days=1, seconds=1))
    assert timing.plan(start, day_later, misfire="catch_up_once", grace=grace) == (
        start, start + timedelta(days=1, seconds=1))
    hourly = Timing.parse(cron="0 * * * *")
    assert hourly.plan(start, start + timedelta(hours=5, minutes=30), misfire="skip",
                       grace=timedelta(minutes=1)) == (None, start + timedelta(hours=6))


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_cron_in_a_timezone_across_daylight_saving() -> None:
    daily = Timing.parse("30 2 * * *", timezone=BERLIN)
    # 2026-03-29 02:30 does not exist in Berlin (02:00 CET -> 03:00 CEST): that day is skipped.
    assert daily.next_after(utc(2026, 3, 28, 2, 0)) == utc(2026, 3, 30, 0, 30)
    assert daily.next_after(utc(2026, 3, 27, 2, 0)) == utc(2026, 3, 28, 1, 30)
    # 2026-10-25 02:30 happens twice (CEST, then CET): it fires once, at the first.
    assert daily.next_after(utc(2026, 10, 24, 12, 0)) == utc(2026, 10, 25, 0, 30)
    assert daily.next_after(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30)
    hourly = Timing.parse("0 * * * *", timezone=BERLIN)
    assert hourly.next_after(utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    fall = [utc(2026, 10, 24, 23, 30)]
    for _ in range(4):
        fall.append(hourly.next_after(fall[-1]))
    # From 01:30 CEST: 02:00 CEST, (02:00 CET is the repeat: skipped), 03:00, 04:00, 05:00 CET.
    assert fall[1:] == [utc(2026, 10, 24, 23, 0) + timedelta(hours=h) for h in (1, 3, 4, 5)]


async def test_dst_spring_forward_fires_on_the_real_days(app: Soniq) -> None:
    register(app)
    service = fixed(app, utc(2026, 3, 27, 12, 0))
    added = await app.scheduler.add("report", cron="30 2 * * *", timezone=BERLIN)
    assert added["next_run_at"] == utc(2026, 3, 28, 1, 30)
    assert len(await service.tick(now=utc(2026, 3, 28, 1, 30, 1))) == 1
    state = await app.scheduler.get("report")
    assert state is not None and state["next_run_at"] == utc(2026, 3, 30, 0, 30)
    assert await service.tick(now=utc(2026, 3, 29, 1, 30)) == []  # the day without 02:30


async def test_periodic_definitions_are_synced(app: Soniq) -> None:
    ran: list[int] = []

    @app.periodic(every=30, name="tick", args={"n": 4}, queue="beats", retries=0)
    async def tick(n: int) -> None:
        ran.append(n)

    @app.periodic(cron="0 6 * * *", name="morning", timezone=BERLIN)
    def morning() -> None:
        return None

    assert app.registry.get("tick") is not None and app.registry.get("morning") is not None
    assert app.scheduler.definitions == ["morning", "tick"]
    assert await app.scheduler.list() == []  # nothing is written before a scheduler starts
    service = fixed(app)
    assert await service.tick(now=NOW) == []  # the first tick syncs
    stored = {s["name"]: s for s in await app.scheduler.list()}
    assert set(stored) == {"morning", "tick"}
    assert stored["tick"]["args"] == {"n": 4} and stored["tick"]["next_run_at"] == NOW + timedelta(seconds=30)
    assert stored["morning"]["next_run_at"] == utc(2026, 1, 6, 5, 0)
    # A redeploy (sync again, later) keeps the pause and the pending fire time.
    await app.scheduler.pause("tick")
    app.scheduler.clock = lambda: NOW + timedelta(minutes=5)
    assert await app.scheduler.sync() == 2
    again = await app.scheduler.get("tick")
    assert again is not None and again["paused"] is True
    assert again["next_run_at"] == NOW + timedelta(seconds=30)
    await app.scheduler.resume("tick")
    [job_id] = await service.tick(now=NOW + timedelta(seconds=30))
    job = await app.get_job(job_id)
    assert job is not None and job["queue"] == "beats" and job["max_attempts"] == 1


async def test_a_job_this_worker_does_not_know_is_left_for_others(caplog: pytest.LogCaptureFixture) -> None:
    shared = MemoryBackend()
    producer = Soniq(backend=shared)
    register(producer)
    consumer = Soniq(backend=shared)  # registers nothing
    first = (await producer.scheduler.add("report", every=10))["next_run_at"]
    assert await consumer.scheduler.service().tick(now=first) == []
    assert "'report' (job 'report')" in caplog.text and "not registered" in caplog.text
    assert len(await producer.scheduler.service().tick(now=first)) == 1
    await producer.close()
    await consumer.close()


async def test_schedules_of_unknown_jobs_do_not_starve_the_others(
        app: Soniq, backend_name: str, database_url: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue #26, finding 6: a full due batch of schedules whose job this app does not register
    (another service's, on the same database) sorts before the one it knows. The tick still
    fires that one, leaves the others exactly as they were, and names them in one warning per
    scheduler; the service that knows their job still fires them."""
    caplog.set_level(logging.WARNING, logger="soniq.scheduler")
    register(app)
    service = fixed(app)
    other = (Soniq(backend=app.backend, enqueue_validation="none") if backend_name == "memory"
             else Soniq(database_url=database_url, enqueue_validation="none"))
    try:
        other.scheduler.clock = lambda: NOW - timedelta(minutes=1)
        for n in range(DUE_BATCH):
            await other.scheduler.add(f"billing.{n:03}", every=30, target="billing.invoice")
        theirs = [s for s in await other.scheduler.list() if s["name"].startswith("billing.")]
        first = (await app.scheduler.add("report", every=30))["next_run_at"]
        assert all(s["next_run_at"] < first for s in theirs)  # all due first, a full batch

        [job_id] = await service.tick(now=first)
        job = await app.get_job(job_id)
        assert job is not None and job["job_name"] == "report"
        assert len(await service.tick(now=first + timedelta(seconds=30))) == 1
        after = [s for s in await other.scheduler.list() if s["name"].startswith("billing.")]
        assert after == theirs  # not fired, advanced, paused or deleted by this app
        warnings = [r.getMessage() for r in caplog.records if "not registered" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once per scheduler, not once per tick
        assert warnings[0].startswith(f"{DUE_BATCH} schedule(s)")
        assert "'billing.000' (job 'billing.invoice')" in warnings[0]
        assert f"and {DUE_BATCH - 20} more" in warnings[0]
        assert (await app.scheduler.get("billing.000"))["job_known"] is False  # type: ignore[index]
        assert (await app.scheduler.get("report"))["job_known"] is True  # type: ignore[index]

        fired = await other.scheduler.service().tick(now=first + timedelta(seconds=30))
        assert len(fired) == DUE_BATCH  # the service that can enqueue them still fires them
        assert len(await jobs_named(app, "billing.invoice")) == DUE_BATCH
    finally:
        await other.close()


async def test_schedules_this_app_cannot_build_do_not_starve_the_others(
        app: Soniq, backend_name: str, database_url: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    """A full due batch of schedules of a job this app *does* register, but with arguments its
    signature refuses (stored by a service that could not check them), sorts before a good one:
    the tick reads past them, fires the good one, and leaves them as they were."""
    caplog.set_level(logging.WARNING, logger="soniq.scheduler")
    register(app)
    other = (Soniq(backend=app.backend, enqueue_validation="none") if backend_name == "memory"
             else Soniq(database_url=database_url, enqueue_validation="none"))
    try:
        other.scheduler.clock = lambda: NOW - timedelta(minutes=1)
        for n in range(DUE_BATCH):
            await other.scheduler.add(f"broken.{n:03}", every=30, target="report",
                                      args={"no_such_argument": n})
        broken = [s for s in await other.scheduler.list() if s["name"].startswith("broken.")]
        first = (await app.scheduler.add("good", every=30, target="report",
                                         args={"n": 1}))["next_run_at"]
        assert all(s["next_run_at"] < first for s in broken)  # all due first, a full batch
        service = fixed(app)
        assert len(await service.tick(now=first)) == 1
        assert len(await service.tick(now=first + timedelta(seconds=30))) == 1
        assert [j["args"] for j in await jobs_named(app, "report")] == [{"n": 1}] * 2
        after = [s for s in await other.scheduler.list() if s["name"].startswith("broken.")]
        assert after == broken  # not fired, advanced, paused or deleted
        assert "schedule 'broken.000' cannot enqueue job 'report' here" in caplog.text
    finally:
        await other.close()


# -- end to end -----------------------------------------------------------------------------------
@pytest.fixture
async def quick_app(backend_name: str, database_url: str | None) -> AsyncIterator[Soniq]:
    soniq = Soniq(database_url=database_url, backend=backend_name if database_url is None else None,
                  poll_interval=0.05, heartbeat_interval=0.1, heartbeat_timeout=2.0,
                  scheduler_interval=0.05)
    try:
        yield soniq
    finally:
        await soniq.close()


async def test_a_worker_fires_a_schedule_end_to_end(quick_app: Soniq) -> None:
    ran = register(quick_app)
    await quick_app.scheduler.add("report", every=1, args={"n": 9})
    async with running_worker(quick_app):
        await wait_for(lambda: ran, message="the scheduled job to run")
    assert ran[:1] == [9]
    state = await quick_app.scheduler.get("report")
    assert state is not None and state["last_run_at"] is not None


async def test_run_scheduler_alone(quick_app: Soniq) -> None:
    register(quick_app)

    @quick_app.periodic(every=1, name="alone")
    async def alone() -> None:
        return None

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_scheduler, quick_app)
        await wait_for(lambda: jobs_named(quick_app, "alone"), message="a queued job")
        tg.cancel_scope.cancel()
    [job] = await jobs_named(quick_app, "alone")
    assert job["status"] == "queued"  # enqueued by the scheduler; no worker ran it
