"""``async with app.running_worker():`` on asyncio and trio, on every backend."""

from __future__ import annotations

import anyio
import pytest

from soniq import Soniq
from soniq.testing import wait_for_status

pytestmark = pytest.mark.anyio


async def test_jobs_enqueued_in_the_block_run_there(app: Soniq) -> None:
    @app.job(name="double")
    async def double(n: int) -> int:
        return n * 2

    async with app.running_worker(concurrency=2) as worker:
        ids = [await app.enqueue(double, n=n) for n in range(5)]
        for job_id in ids:
            await wait_for_status(app, job_id, "done")
    assert [await app.get_result(i) for i in ids] == [0, 2, 4, 6, 8]
    assert worker.processed == 5


async def test_leaving_the_block_lets_a_running_job_finish(app: Soniq) -> None:
    started, release = anyio.Event(), anyio.Event()

    @app.job(name="slow")
    async def slow() -> str:
        started.set()
        await release.wait()
        return "finished"

    async def release_soon() -> None:
        await anyio.sleep(0.05)  # only to let the block's exit start waiting first
        release.set()

    job_id = await app.enqueue(slow)
    async with anyio.create_task_group() as tg, app.running_worker():
        with anyio.fail_after(10):
            await started.wait()
        tg.start_soon(release_soon)  # the graceful stop of the worker waits for this job
    record = await wait_for_status(app, job_id, "done")
    assert record["result"] == "finished" and record["attempts"] == 1


async def test_an_error_in_the_block_gives_running_jobs_back(app: Soniq) -> None:
    started = anyio.Event()

    @app.job(name="forever")
    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    async def serve() -> None:
        async with app.running_worker():
            with anyio.fail_after(10):
                await started.wait()
            raise RuntimeError("request failed")

    job_id = await app.enqueue(forever)
    with pytest.raises(RuntimeError, match="request failed"):
        await serve()
    record = await app.get_job(job_id)
    assert record is not None
    assert record["status"] == "queued"  # given back without using up the job
    assert not record["errors"]


async def test_queues_and_concurrency_are_the_workers(app: Soniq) -> None:
    @app.job(name="noop")
    async def noop() -> None:
        return None

    other = await app.enqueue(noop, queue="other")
    async with app.running_worker(queues=["mine"], concurrency=3) as worker:
        assert worker.concurrency == 3 and worker.queues == ("mine",)
        mine = await app.enqueue(noop, queue="mine")
        await wait_for_status(app, mine, "done")
    assert (await app.get_job(other))["status"] == "queued"
