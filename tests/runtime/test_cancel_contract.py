"""``cancel_job`` is True only when the job is cancelled (spec: "True if the job was
cancelled"); a running job's cancel is a request, reported apart by ``request_cancel``: the job
is not cancelled until its worker acts on it (and may finish first)."""

from __future__ import annotations

import anyio
import pytest

from soniq import Soniq
from tests.helpers import running_worker, wait_for_status

pytestmark = pytest.mark.anyio


async def test_cancel_job_is_true_only_for_a_job_it_cancelled(app: Soniq) -> None:
    started, release = anyio.Event(), anyio.Event()

    @app.job(name="holds_off")
    async def holds_off() -> str:
        started.set()
        with anyio.CancelScope(shield=True):  # cannot end before the test has asked twice
            await release.wait()
        await anyio.sleep_forever()  # then ends when its worker acts on the request
        return "done"

    waiting = await app.enqueue(holds_off, scheduled_at=3600)
    running = await app.enqueue(holds_off)
    async with running_worker(app):
        await started.wait()
        try:
            # A request, not a cancellation: the job is still running.
            assert await app.cancel_job(running) is False
            assert await app.request_cancel(running) == "requested"
            record = await app.get_job(running)
            assert record is not None and record["status"] == "processing"
        finally:
            release.set()
        # Once the worker acted on the request, the job is cancelled.
        record = await wait_for_status(app, running, "cancelled")
        assert record["result"] is None
    assert await app.request_cancel(running) is None  # final: nothing to cancel
    assert await app.cancel_job(waiting) is True
    record = await app.get_job(waiting)
    assert record is not None and record["status"] == "cancelled"
    assert await app.request_cancel(waiting) is None
