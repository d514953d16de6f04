"""Job code that fights the worker, on every backend under asyncio and trio: it raises
``SystemExit``/``KeyboardInterrupt``, swallows its cancellation, or returns values (a snooze, a
retry delay) whose date is out of range. Each is an outcome of that job; the worker carries on.
(``soniq worker`` subprocesses facing the same jobs: tests/reliability/test_crashes.py.)"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import anyio
import pytest

from soniq import JobRecord, Snooze, Soniq
from tests.helpers import running_worker, wait_for, wait_for_status

pytestmark = pytest.mark.anyio

TEN_YEARS = timedelta(days=3650)


async def test_base_exceptions_fail_the_attempt_and_the_worker_carries_on(app: Soniq) -> None:
    @app.job(name="exits", retries=1)
    async def exits() -> None:
        sys.exit(3)

    @app.job(name="interrupted", retries=0)
    async def interrupted() -> None:
        raise KeyboardInterrupt("ctrl-c from job code")

    @app.job(name="exits_in_thread", retries=0)
    def exits_in_thread() -> None:
        raise SystemExit("bye from a thread")

    @app.job(name="group", retries=0)
    async def group() -> None:
        raise BaseExceptionGroup("several", [SystemExit(5), ValueError("v")])

    @app.job(name="fine")
    async def fine(n: int) -> int:
        await anyio.sleep(0.05)
        return n

    ids = {name: await app.enqueue(name) for name in
           ("exits", "interrupted", "exits_in_thread", "group")}
    fine_ids = [await app.enqueue(fine, n=n) for n in range(3)]
    async with running_worker(app, concurrency=8):
        for job_id in fine_ids:
            await wait_for_status(app, job_id, "done")
        exits_record = await wait_for_status(app, ids["exits"], "dead_letter")
        records = {name: await wait_for_status(app, job_id, "dead_letter")
                   for name, job_id in ids.items()}
    assert [await app.get_result(i) for i in fine_ids] == [0, 1, 2]
    assert [(e["type"], e["message"]) for e in exits_record["errors"]] == [("SystemExit", "3")] * 2
    assert records["interrupted"]["last_error"] == "KeyboardInterrupt: ctrl-c from job code"
    assert records["exits_in_thread"]["last_error"] == "SystemExit: bye from a thread"
    assert records["group"]["errors"][0]["type"] == "BaseExceptionGroup"
    assert "SystemExit" in records["group"]["errors"][0]["traceback"]
    assert await app.backend.list_workers() == []  # it stopped cleanly, not crashed


async def test_a_job_that_swallows_cancellation_still_times_out_or_ends_cancelled(
        app: Soniq, caplog: pytest.LogCaptureFixture) -> None:
    cancelled = anyio.get_cancelled_exc_class()
    started = anyio.Event()
    spins: list[int] = []

    @app.job(name="swallows_once", timeout=0.2, retries=0)
    async def swallows_once() -> str:
        try:
            await anyio.sleep(30)
        except cancelled:
            return "swallowed"
        return "slept"

    @app.job(name="swallows_always", timeout=0.2, retries=0)
    async def swallows_always() -> str:
        caught, until = 0, time.monotonic() + 0.6
        while time.monotonic() < until:
            try:
                await anyio.sleep(0.01)
            except cancelled:
                caught += 1
        spins.append(caught)
        return "ignored"

    @app.job(name="swallows_cancel_job")
    async def swallows_cancel_job() -> str:
        started.set()
        try:
            await anyio.sleep(30)
        except cancelled:
            return "swallowed"
        return "slept"

    once = await app.enqueue(swallows_once)
    always = await app.enqueue(swallows_always)
    cancel_me = await app.enqueue(swallows_cancel_job)
    with caplog.at_level(logging.WARNING, logger="soniq"):
        async with running_worker(app, concurrency=3):
            await started.wait()
            assert await app.request_cancel(cancel_me) == "requested"  # it is running
            records = [await wait_for_status(app, job_id, "dead_letter", "done", "cancelled")
                       for job_id in (once, always, cancel_me)]
    assert [r["status"] for r in records] == ["dead_letter", "dead_letter", "cancelled"]
    timed_out = "TimeoutError: job exceeded its timeout of 0.2s"
    assert [r["last_error"] for r in records[:2]] == [timed_out, timed_out]
    assert [r["result"] for r in records] == [None, None, None]
    assert spins[0] > 1  # the cancellation was delivered again and again, and ignored
    ignoring = {r.args[1] for r in caplog.records if "ignores cancellation" in r.getMessage()}
    assert ignoring == {"swallows_once", "swallows_always", "swallows_cancel_job"}


async def test_far_dates_are_capped_and_never_leave_a_job_processing(app: Soniq) -> None:
    @app.job(name="snoozes_forever")
    async def snoozes_forever() -> Snooze:
        return Snooze(1e20)

    @app.job(name="retries_in_an_eon", retry_delay=1e20)
    async def retries_in_an_eon() -> None:
        raise ValueError("later")

    @app.job(name="succeeds")
    async def succeeds() -> str:
        return "ok"

    async def settled(job_id: str) -> JobRecord | None:
        """The job once it has run: final, or queued for a time over a day away."""
        record = await app.get_job(job_id)
        if record is None or record["status"] == "processing" or (
                record["status"] == "queued" and record["scheduled_at"] < now + timedelta(days=1)):
            return None
        return record

    now = datetime.now(UTC)
    snoozed = await app.enqueue(snoozes_forever)
    retried = await app.enqueue(retries_in_an_eon)
    async with running_worker(app) as worker:
        records = [await wait_for(partial(settled, job_id), message=f"job {job_id} to run")
                   for job_id in (snoozed, retried)]
        # The clock at the end of time: the expiry of a result cannot be computed. The job
        # still gets an outcome (dead-lettered, naming the error); the worker carries on.
        worker.executor._now = lambda: datetime.max.replace(tzinfo=UTC)
        broken = await wait_for_status(app, await app.enqueue(succeeds), "dead_letter", "done")
        worker.executor._now = lambda: datetime.now(UTC)
        fine = await wait_for_status(app, await app.enqueue(succeeds), "done")
    assert (records[0]["status"], records[0]["attempts"], records[0]["errors"]) == ("queued", 0, [])
    assert records[1]["status"] == "queued" and records[1]["last_error"] == "ValueError: later"
    for record in records:
        assert now + TEN_YEARS - timedelta(days=1) < record["scheduled_at"] < now + TEN_YEARS * 1.01
    assert broken["status"] == "dead_letter" and broken["errors"][0]["type"] == "OverflowError"
    assert "could not record this attempt" in broken["errors"][0]["message"]
    assert fine["result"] == "ok"


async def test_the_longest_result_ttl_is_stored(backend_name: str, database_url: str | None) -> None:
    app = Soniq(database_url=database_url, backend=None if database_url else backend_name,
                result_ttl=315_360_000, poll_interval=0.05)

    @app.job(name="kept")
    async def kept() -> str:
        return "for ten years"

    job_id = await app.enqueue(kept)
    try:
        assert await app.run_worker(run_once=True) == 1
        record = await app.get_job(job_id)
    finally:
        await app.close()
    assert record is not None and record["status"] == "done" and record["expires_at"] is not None
    assert record["finished_at"] is not None
    assert abs(record["expires_at"] - record["finished_at"] - TEN_YEARS) < timedelta(minutes=1)
