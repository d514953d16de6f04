"""``cancel_job`` is True only when the job is cancelled (spec: "True if the job was
cancelled"); a running job's cancel is a request, reported apart by ``request_cancel``, and the
job may still finish first."""

from __future__ import annotations

import anyio
import pytest

from soniq import Soniq
from tests.helpers import running_worker, wait_for_status

pytestmark = pytest.mark.anyio


async def test_cancel_job_is_true_only_for_a_job_it_cancelled(app: Soniq) -> None:
    started, release = anyio.Event(), anyio.Event()

    @app.job(name="finishes_anyway")
    async def finishes_anyway() -> str:
        started.set()
        with anyio.CancelScope(shield=True):  # ignores the cancel request: it finishes
            await release.wait()
        return "done"

    waiting = await app.enqueue(finishes_anyway, scheduled_at=3600)
    running = await app.enqueue(finishes_anyway)
    async with running_worker(app):
        await started.wait()
        try:
            # A request, not a cancellation: the job is still running, and here it finishes.
            assert await app.cancel_job(running) is False
            assert await app.request_cancel(running) == "requested"
        finally:
            release.set()
        record = await wait_for_status(app, running, "done")
        assert record["result"] == "done"
    assert await app.request_cancel(running) is None  # finished: nothing to cancel
    assert await app.cancel_job(waiting) is True
    record = await app.get_job(waiting)
    assert record is not None and record["status"] == "cancelled"
    assert await app.request_cancel(waiting) is None
