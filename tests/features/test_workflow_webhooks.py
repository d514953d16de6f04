"""Webhook events of workflows (``workflow.done``, ``workflow.failed``, ``workflow.cancelled``)
to a real local HTTP receiver, on every backend under asyncio and trio."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from soniq import Soniq
from soniq.errors import ValidationError
from soniq.features.webhooks import verify_signature
from soniq.runtime.cleanup import Cleanup
from soniq.serialization import utc_now
from soniq.types import WorkerInfo
from tests.features import test_webhooks
from tests.features.test_webhooks import Receiver, drain, loaded_service
from tests.helpers import running_worker, wait_for

pytestmark = pytest.mark.anyio

receiver = test_webhooks.receiver  # the fixture: a real local HTTP receiver

WORKFLOW_EVENTS = ["workflow.done", "workflow.failed", "workflow.cancelled"]


def register(app: Soniq) -> None:
    @app.job(name="ok")
    async def ok() -> int:
        return 1

    @app.job(name="boom", retries=0)
    async def boom() -> None:
        raise RuntimeError("kaput")


def diamond(app: Soniq, name: str, middle: str = "ok") -> Any:
    wf = app.workflow(name)
    a = wf.add("ok", name="a")
    b = wf.add(middle, name="b", after=[a])
    c = wf.add("ok", name="c", after=[a])
    wf.add("ok", name="d", after=[b, c])
    return wf


def payloads(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(body) for _, body in receiver.requests]


async def test_register_validates_workflow_events(app: Soniq, receiver: Receiver) -> None:
    created = await app.webhooks.register(receiver.url, allow_private=True,
                                          events=["workflow.done"])
    assert created["events"] == ["workflow.done"]
    with pytest.raises(ValidationError, match="workflow.bogus"):
        await app.webhooks.register(receiver.url, allow_private=True, events=["workflow.bogus"])


async def test_a_diamond_that_succeeds_is_delivered_done_once(app: Soniq,
                                                              receiver: Receiver) -> None:
    register(app)
    created = await app.webhooks.register(receiver.url, allow_private=True,
                                          events=WORKFLOW_EVENTS)
    service = await loaded_service(app)
    workflow_id = await diamond(app, "nightly").enqueue()
    await app.run_worker(run_once=True)
    await drain(service)

    [(headers, body)] = receiver.requests
    assert verify_signature(created["secret"], headers, body)
    payload = json.loads(body)
    assert payload["type"] == "workflow.done"
    data = payload["data"]
    assert (data["workflow_id"], data["name"], data["kind"], data["status"]) == (
        workflow_id, "nightly", "workflow", "done")
    assert data["counts"]["done"] == 4 and sum(data["counts"].values()) == 4


async def test_a_diamond_whose_step_dead_letters_is_delivered_failed(app: Soniq,
                                                                     receiver: Receiver) -> None:
    register(app)
    await app.webhooks.register(receiver.url, allow_private=True, events=WORKFLOW_EVENTS)
    service = await loaded_service(app)
    workflow_id = await diamond(app, "broken", middle="boom").enqueue()
    await app.run_worker(run_once=True)
    await drain(service)

    [payload] = payloads(receiver)
    assert payload["type"] == "workflow.failed"
    assert payload["data"]["workflow_id"] == workflow_id
    counts = payload["data"]["counts"]
    assert (counts["done"], counts["dead_letter"], counts["cancelled"]) == (2, 1, 1)


async def test_only_subscribed_events_and_a_batch(app: Soniq, receiver: Receiver) -> None:
    register(app)
    await app.webhooks.register(receiver.url, allow_private=True, events=["workflow.failed"])
    service = await loaded_service(app)
    await diamond(app, "fine").enqueue()  # done: not subscribed
    batch = await app.enqueue_batch("boom", [{}, {}], on_complete="ok")
    await app.run_worker(run_once=True)
    await drain(service)

    [payload] = payloads(receiver)
    # The callback ran (done) after both items dead-lettered: the batch failed.
    assert (payload["type"], payload["data"]["workflow_id"], payload["data"]["kind"]) == (
        "workflow.failed", batch, "batch")


async def test_cancelling_a_workflow_is_delivered(app: Soniq, receiver: Receiver) -> None:
    register(app)
    await app.webhooks.register(receiver.url, allow_private=True, events=WORKFLOW_EVENTS)
    workflow_id = await diamond(app, "stopped").enqueue()
    await app.workflows.cancel(workflow_id)  # no worker here: the cancel writes the event
    await drain(await loaded_service(app))

    [payload] = payloads(receiver)
    assert (payload["type"], payload["data"]["status"]) == ("workflow.cancelled", "cancelled")
    assert payload["data"]["counts"]["cancelled"] == 4


async def test_a_running_worker_delivers_workflow_done(backend_name: str,
                                                       database_url: str | None,
                                                       receiver: Receiver) -> None:
    """End to end: the worker's own webhook service announces the workflow it finished."""
    worker_app = Soniq(database_url=database_url,
                       backend=backend_name if database_url is None else None,
                       poll_interval=0.05, webhook_poll_interval=0.05,
                       webhook_reload_interval=0.1)
    try:
        register(worker_app)
        await worker_app.webhooks.register(receiver.url, allow_private=True,
                                           events=["workflow.done"])
        async with running_worker(worker_app):
            workflow_id = await diamond(worker_app, "live").enqueue()
            await wait_for(lambda: len(receiver.requests) >= 1)
        [payload] = payloads(receiver)
        assert (payload["type"], payload["data"]["workflow_id"]) == ("workflow.done",
                                                                     workflow_id)
    finally:
        await worker_app.close()


async def test_a_step_that_the_rescue_dead_letters_is_delivered_failed(
        app: Soniq, receiver: Receiver) -> None:
    """The last step of a workflow, lost with its worker on its last attempt: the rescue ends
    it (dead letter) and the workflow's event follows, as a worker's outcome would."""
    register(app)
    await app.webhooks.register(receiver.url, allow_private=True, events=WORKFLOW_EVENTS)
    service = await loaded_service(app)
    wf = app.workflow("lost")
    wf.add("boom", name="only")  # retries=0: the lost attempt was its last
    workflow_id = await wf.enqueue()
    dead = WorkerInfo("00000000-0000-7000-8000-000000000001", "h", 1, None, 1)
    await app.backend.register_worker(dead, now=utc_now() - timedelta(hours=1))
    assert len(await app.backend.claim_jobs(dead.id, None, 1)) == 1
    cleanup = Cleanup(app.backend, interval=0.001, stale_after=60.0, error_retry_delay=1.0,
                      events=app.events)
    await wait_for(cleanup.tick, message="a cleanup round to lead")
    await drain(service)

    [payload] = payloads(receiver)
    assert (payload["type"], payload["data"]["workflow_id"]) == ("workflow.failed", workflow_id)
    assert payload["data"]["counts"]["dead_letter"] == 1


async def test_a_lone_step_cancelled_reaches_the_workers_service_and_a_whole_cancel_once(
        app: Soniq, receiver: Receiver) -> None:
    """With a webhook service in this process (an embedded worker's): cancelling the only
    waiting step of a workflow is reported to it (``workflow.cancelled``); cancelling a whole
    workflow is announced by ``app.workflows.cancel`` alone, not a second time by the service."""
    register(app)
    await app.webhooks.register(receiver.url, allow_private=True, events=WORKFLOW_EVENTS)
    service = await loaded_service(app)
    lone = app.workflow("lone")
    lone.add("ok", name="only", scheduled_at=3600)
    lone_id = await lone.enqueue()
    info = await app.workflows.get(lone_id)
    assert info is not None
    assert await app.cancel_job(info["steps"][0]["job_id"]) is True
    whole_id = await diamond(app, "whole").enqueue()
    await app.workflows.cancel(whole_id)
    await drain(service)

    sent = sorted((p["data"]["workflow_id"], p["type"]) for p in payloads(receiver))
    assert sent == sorted([(lone_id, "workflow.cancelled"), (whole_id, "workflow.cancelled")])
