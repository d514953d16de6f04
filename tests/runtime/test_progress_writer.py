"""``JobStateWriter`` with an injected clock and a recording store: coalescing and pacing of
progress, batching of checkpoints, and settling an ended attempt's last value."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import pytest

from soniq import JobContext
from soniq.runtime.progress import JobStateWriter
from soniq.runtime.seams import JsonCodec
from soniq.types import JobState
from tests.helpers import wait_for

pytestmark = pytest.mark.anyio


class Store:
    """Accepts every state and records each batch."""

    def __init__(self) -> None:
        self.batches: list[list[JobState]] = []

    async def save(self, states: Sequence[JobState]) -> list[str]:
        self.batches.append(list(states))
        return [state.job_id for state in states]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def context(writer: JobStateWriter, n: int) -> JobContext:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return JobContext(job_id=f"job-{n}", job_name="tests.job", attempt=1, max_attempts=3,
                      queue="default", worker_id="w", scheduled_at=at, created_at=at,
                      lease_id=f"lease-{n}", reporter=writer)


async def test_progress_is_coalesced_and_paced_by_the_clock() -> None:
    store, clock = Store(), Clock()
    writer = JobStateWriter(store, JsonCodec(), max_checkpoint_bytes=1000, clock=clock,
                            gather=0.0)
    ctx = context(writer, 1)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        await ctx.progress(1)
        await wait_for(lambda: len(store.batches) == 1, message="the first value, soon")
        for i in range(10_000):  # within the same second: kept, not written
            await ctx.progress(i / 100)
        await anyio.wait_all_tasks_blocked()
        assert len(store.batches) == 1
        clock.now = 1.0  # a second later the latest value goes, once
        writer._wake.set()
        await wait_for(lambda: len(store.batches) == 2, message="the second write")
        await anyio.wait_all_tasks_blocked()
        assert [s.progress for b in store.batches for s in b] == ["1", "99.99"]
        await ctx.progress(50)  # pending when the attempt ends: written before its outcome
        await writer.settle(ctx.lease_id)
        assert store.batches[-1] == [JobState("job-1", "lease-1", "50", None)]
        assert not writer.reported(ctx.lease_id)
        tg.cancel_scope.cancel()


async def test_checkpoints_of_many_jobs_go_in_one_write() -> None:
    store = Store()
    writer = JobStateWriter(store, JsonCodec(), max_checkpoint_bytes=1000, gather=0.01)
    contexts = [context(writer, n) for n in range(100)]
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        async with anyio.create_task_group() as jobs:
            for ctx in contexts:
                jobs.start_soon(ctx.checkpoint, {"n": ctx.job_id})
        tg.cancel_scope.cancel()
    assert sum(len(batch) for batch in store.batches) == 100
    assert len(store.batches) < 100


class SlowStore(Store):
    """Holds each save until ``release`` is set (one at a time)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = anyio.Event()
        self.saving = anyio.Event()

    async def save(self, states: Sequence[JobState]) -> list[str]:
        self.saving.set()
        await self.release.wait()
        self.release, self.saving = anyio.Event(), anyio.Event()
        return await super().save(states)


async def test_settle_waits_for_the_latest_value_not_a_write_in_flight() -> None:
    store = SlowStore()
    writer = JobStateWriter(store, JsonCodec(), max_checkpoint_bytes=1000, gather=0.0)
    ctx = context(writer, 1)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        await ctx.progress(10)
        await store.saving.wait()  # "10" is being written
        await ctx.progress(20)  # newer, pending
        settled = anyio.Event()

        async def settle() -> None:
            await writer.settle(ctx.lease_id)
            settled.set()

        tg.start_soon(settle)
        await anyio.wait_all_tasks_blocked()
        store.release.set()  # "10" lands; settle must go on waiting for "20"
        await store.saving.wait()
        assert not settled.is_set()
        store.release.set()
        with anyio.fail_after(5):
            await settled.wait()
        assert [s.progress for b in store.batches for s in b] == ["10", "20"]
        tg.cancel_scope.cancel()
