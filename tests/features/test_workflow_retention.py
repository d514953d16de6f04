"""Retention of workflow rows: a workflow row goes once its last step is pruned (the cleanup's
prune round, ``WorkflowStore.prune``), on every backend."""

from __future__ import annotations

from datetime import timedelta

import pytest

from soniq import Soniq
from soniq.runtime.cleanup import Cleanup
from soniq.runtime.seams import EventDispatcher
from soniq.serialization import utc_now

pytestmark = pytest.mark.anyio


def register(app: Soniq) -> None:
    @app.job(name="step")
    async def step() -> int:
        return 1

    @app.job(name="never")
    async def never() -> None:
        return None


async def test_a_workflow_row_goes_once_its_steps_are_pruned(app: Soniq) -> None:
    register(app)
    wf = app.workflow("pruned")
    first = wf.add("step")
    wf.add("step", after=[first])
    finished = await wf.enqueue()
    await app.run_worker(run_once=True, queues=["default"])
    unfinished = app.workflow("kept")
    unfinished.add("never", queue="elsewhere")
    kept = await unfinished.enqueue()
    store = app.backend.workflows
    assert store is not None

    assert await store.prune() == 0  # every row still has its steps
    assert await app.backend.prune_jobs(now=utc_now() + timedelta(days=30)) == 2
    info = await app.workflows.get(finished)
    assert info is not None and info["steps"] == []

    assert await store.prune() == 1
    assert await app.workflows.get(finished) is None
    assert await app.workflows.get(kept) is not None
    assert await store.prune() == 0


async def test_the_cleanup_round_prunes_workflow_rows(app: Soniq) -> None:
    register(app)
    wf = app.workflow("emptied")
    wf.add("step")
    workflow_id = await wf.enqueue()
    info = await app.workflows.get(workflow_id)
    assert info is not None
    assert await app.delete_job(info["steps"][0]["job_id"])  # its only step is gone

    cleanup = Cleanup(app.backend, interval=60, stale_after=60, error_retry_delay=1,
                      events=EventDispatcher())
    assert await cleanup.tick() is not None
    assert await app.workflows.get(workflow_id) is None
