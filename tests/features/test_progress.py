"""``ctx.progress`` and ``ctx.checkpoint`` (issue #22, items 2 and 3) on every backend, under
asyncio and trio: what is stored, when, and that a stale attempt's writes are refused."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest
from cryptography.fernet import Fernet

from soniq import JobContext, Soniq
from soniq.backends.base import JobStateStore, StorageBackend
from soniq.errors import LeaseLostError, ValidationError
from soniq.runtime.progress import JobStateWriter, progress_text
from soniq.runtime.seams import JsonCodec
from soniq.serialization import utc_now
from soniq.types import JobState
from tests.helpers import running_worker, wait_for, wait_for_status

pytestmark = pytest.mark.anyio


class CountingStore:
    """Wraps a backend's ``job_states``: counts the writes that carried each job."""

    def __init__(self, inner: JobStateStore) -> None:
        self.inner = inner
        self.writes: dict[str, int] = {}
        self.batches: list[int] = []

    async def save(self, states: Sequence[JobState]) -> list[str]:
        self.batches.append(len(states))
        for state in states:
            self.writes[state.job_id] = self.writes.get(state.job_id, 0) + 1
        return await self.inner.save(states)


def counting(app: Soniq) -> CountingStore:
    """Count the job-state writes of the workers ``app`` starts from now on."""
    store = CountingStore(app.backend.job_states)
    app.backend.job_states = store  # type: ignore[misc]  # each adapter's attribute
    return store


def test_progress_values() -> None:
    assert progress_text(0) == "0"
    assert progress_text(42.5) == "42.5"
    assert progress_text({"done": 3, "of": 10}) == '{"done":3,"of":10}'
    for bad in (-1, 100.5, math.nan, math.inf, True, "50", [1], None):
        with pytest.raises(ValidationError, match="progress must be"):
            progress_text(bad)
    with pytest.raises(ValidationError, match="at most 4096 bytes"):
        progress_text({"x": "y" * 5000})
    with pytest.raises(ValidationError, match="NUL"):
        progress_text({"x": "a\x00b"})
    with pytest.raises(ValidationError):
        progress_text({"x": object()})


async def test_progress_is_visible_to_another_app_while_the_job_runs(
        app: Soniq, other: Callable[..., Soniq]) -> None:
    release = anyio.Event()

    @app.job(name="crunch")
    async def crunch(ctx: JobContext) -> str:
        await ctx.progress(10)
        await ctx.progress({"step": "load", "done": 3, "of": 10})
        await release.wait()
        await ctx.progress(100)
        return "ok"

    watcher = other()
    job_id = await app.enqueue("crunch")
    async with running_worker(app, concurrency=2):
        async def shown() -> Any:
            record = await watcher.get_job(job_id)
            assert record is not None
            return record["progress"] == {"step": "load", "done": 3, "of": 10} and record
        record = await wait_for(shown, message="the progress, from another app")
        assert record["status"] == "processing"
        release.set()
        done = await wait_for_status(app, job_id, "done")
    # The last value is written before the outcome, even within a second of the one before.
    assert done["progress"] == 100
    assert (await watcher.get_job(job_id) or {}).get("progress") == 100


async def test_progress_writes_are_batched_and_bounded(app: Soniq) -> None:
    """10,000 calls make at most about one write per second of the job's runtime (counted at
    the store, not timed)."""
    store = counting(app)
    calls = 10_000

    @app.job(name="chatty")
    async def chatty(ctx: JobContext) -> None:
        for i in range(calls):
            await ctx.progress(100 * i / calls)
            if i % 100 == 0:
                await anyio.sleep(0.001)

    job_id = await app.enqueue("chatty")
    async with running_worker(app):
        started = anyio.current_time()
        record = await wait_for_status(app, job_id, "done", timeout=60)
        runtime = anyio.current_time() - started
    assert record["progress"] == pytest.approx(100 * (calls - 1) / calls)
    writes = store.writes[job_id]
    assert 1 <= writes <= 2 * runtime + 2, (writes, runtime)


async def test_a_bad_progress_fails_the_attempt(app: Soniq) -> None:
    @app.job(name="bad", retries=0)
    async def bad(ctx: JobContext) -> None:
        await ctx.progress(250)

    job_id = await app.enqueue("bad")
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "dead_letter")
    assert record["errors"][-1]["type"] == "ValidationError"
    assert "0 to 100" in record["errors"][-1]["message"]
    assert record["progress"] is None


async def test_the_next_attempt_sees_the_checkpoint(app: Soniq) -> None:
    seen: list[Any] = []

    @app.job(name="resumable", retries=3)
    async def resumable(ctx: JobContext) -> int:
        seen.append(ctx.checkpoint_state)
        start = (ctx.checkpoint_state or {"next": 0})["next"]
        for page in range(start, 6):
            if page == 2 * ctx.attempt:  # attempt 1 fails at page 2, attempt 2 at page 4
                raise RuntimeError(f"flaky at page {page}")
            await ctx.checkpoint({"next": page + 1})
        return start

    job_id = await app.enqueue("resumable")
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "done")
    assert seen == [None, {"next": 2}, {"next": 4}]
    assert record["result"] == 4 and record["attempts"] == 3


async def test_a_timed_out_attempt_leaves_its_checkpoint(app: Soniq) -> None:
    seen: list[Any] = []

    @app.job(name="slow", retries=1, timeout=0.5)
    async def slow(ctx: JobContext) -> str:
        seen.append(ctx.checkpoint_state)
        if ctx.checkpoint_state is None:
            await ctx.checkpoint(["half", 1])
            await anyio.sleep_forever()
        return "resumed"

    job_id = await app.enqueue("slow")
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "done")
    assert seen == [None, ["half", 1]] and record["result"] == "resumed"


async def test_a_shutdown_give_back_keeps_the_checkpoint(app: Soniq) -> None:
    seen: list[Any] = []
    saved = anyio.Event()

    @app.job(name="long")
    async def long(ctx: JobContext) -> str:
        seen.append(ctx.checkpoint_state)
        if ctx.checkpoint_state is None:
            await ctx.checkpoint({"at": 7})
            saved.set()
            await anyio.sleep_forever()
        return "ok"

    job_id = await app.enqueue("long")
    async with anyio.create_task_group() as tg:
        worker = app.worker()
        await tg.start(worker.run)
        await saved.wait()
        worker.cancel()  # running jobs are given back at once, attempt refunded
    queued = await app.get_job(job_id)
    assert queued is not None and queued["status"] == "queued" and queued["attempts"] == 0
    async with running_worker(app):
        await wait_for_status(app, job_id, "done")
    assert seen == [None, {"at": 7}]


async def test_a_replayed_dead_letter_starts_without_checkpoint_or_progress(app: Soniq) -> None:
    seen: list[Any] = []

    @app.job(name="doomed", retries=0)
    async def doomed(ctx: JobContext) -> None:
        seen.append(ctx.checkpoint_state)
        await ctx.progress(50)
        await ctx.checkpoint({"page": 3})
        if len(seen) == 1:
            raise RuntimeError("first time")

    job_id = await app.enqueue("doomed")
    async with running_worker(app):
        dead = await wait_for_status(app, job_id, "dead_letter")
        assert dead["progress"] == 50
        assert await app.dead_letter.replay(job_id)
        replayed = await app.get_job(job_id)
        assert replayed is not None and replayed["progress"] is None
        await wait_for_status(app, job_id, "done")
    assert seen == [None, None]


async def test_checkpoints_of_encrypted_jobs_are_encrypted(backend_name: str,
                                                           database_url: str | None) -> None:
    secret = "s3cret-page-token"
    app = Soniq(database_url=database_url, backend=backend_name if database_url is None else None,
                poll_interval=0.05, secret_keys=[Fernet.generate_key().decode()])
    seen: list[Any] = []
    try:
        @app.job(name="private", encrypt=True, retries=1)
        async def private(ctx: JobContext) -> None:
            seen.append(ctx.checkpoint_state)
            if ctx.checkpoint_state is None:
                await ctx.checkpoint({"token": secret})
                raise RuntimeError("again")

        await app.ensure_initialized()
        writes: list[JobState] = []
        store = app.backend.job_states

        class Spy:
            async def save(self, states: Sequence[JobState]) -> list[str]:
                writes.extend(states)
                return await store.save(states)

        app.backend.job_states = Spy()  # type: ignore[misc]
        job_id = await app.enqueue("private")
        async with running_worker(app):
            await wait_for_status(app, job_id, "done")
        assert seen == [None, {"token": secret}]
        stored = [state.checkpoint for state in writes if state.checkpoint is not None]
        assert stored and all(secret not in text for text in stored)
    finally:
        await app.close()


async def claim_one(backend: StorageBackend, worker_id: str) -> Any:
    [job] = await backend.claim_jobs(worker_id, None, 1, now=utc_now() + timedelta(hours=1))
    return job


async def test_a_stale_attempt_is_refused_and_told(app: Soniq) -> None:
    """A rescued attempt's checkpoint is refused (LeaseLostError) and does not overwrite the
    newer attempt's; its progress raises on the call after the refused write."""

    @app.job(name="twice", retries=3)
    async def twice() -> None:
        return None

    await app.ensure_initialized()
    backend = app.backend
    job_id = await app.enqueue("twice")
    stale = await claim_one(backend, "00000000-0000-7000-8000-000000000001")
    # Its worker never had a row: the rescue takes the job back; another worker claims it.
    assert await backend.rescue_jobs(0, now=utc_now() + timedelta(minutes=5)) == [job_id]
    fresh = await claim_one(backend, "00000000-0000-7000-8000-000000000002")
    assert fresh.lease_id != stale.lease_id

    writer = JobStateWriter(backend.job_states, JsonCodec(), max_checkpoint_bytes=10_000,
                            gather=0.0)

    def context(job: Any) -> JobContext:
        return JobContext(job_id=job.id, job_name=job.job_name, attempt=job.attempts,
                          max_attempts=job.max_attempts, queue=job.queue, worker_id="w",
                          scheduled_at=job.scheduled_at, created_at=job.created_at,
                          lease_id=job.lease_id, reporter=writer)

    old, new = context(stale), context(fresh)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        await new.checkpoint({"from": "fresh"})
        with pytest.raises(LeaseLostError, match="lost its lease"):
            await old.checkpoint({"from": "stale"})
        with pytest.raises(LeaseLostError):  # and everything after it
            await old.progress(5)
        tg.cancel_scope.cancel()

    other_writer = JobStateWriter(backend.job_states, JsonCodec(), max_checkpoint_bytes=10_000,
                                  gather=0.0)
    old = JobContext(**{**_fields(old), "reporter": other_writer})
    async with anyio.create_task_group() as tg:
        await tg.start(other_writer.run)
        await old.progress(77)  # accepted into the buffer; its write is refused
        await wait_for(lambda: other_writer.writes >= 1, message="the stale progress write")
        with pytest.raises(LeaseLostError):
            await old.progress(78)
        tg.cancel_scope.cancel()

    record = await app.get_job(job_id)
    assert record is not None and record["progress"] is None  # the stale 77 was refused
    # The fresh attempt's checkpoint stands: rescue it and claim again to read it.
    assert await backend.rescue_jobs(0, now=utc_now() + timedelta(hours=2)) == [job_id]
    [third] = await backend.claim_jobs("00000000-0000-7000-8000-000000000003", None, 1,
                                       now=utc_now() + timedelta(hours=3))
    assert third.checkpoint == '{"from":"fresh"}'


def _fields(ctx: JobContext) -> dict[str, Any]:
    return {name: getattr(ctx, name) for name in JobContext.__dataclass_fields__}
