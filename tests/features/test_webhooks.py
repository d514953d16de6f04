"""Webhooks (``app.webhooks``, :class:`WebhookService`) on every backend, under asyncio and trio.

A real HTTP server on 127.0.0.1 (a thread) receives the deliveries, so endpoints use
``allow_private=True``; the service is driven with ``run_once()`` instead of waiting for ticks.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import anyio.abc
import pytest

from soniq import Soniq
from soniq.errors import ValidationError
from soniq.features.webhooks import (
    WebhookService,
    check_target,
    resolve_target,
    sign,
    verify_signature,
)
from soniq.serialization import utc_now
from tests.helpers import wait_for

pytestmark = pytest.mark.anyio


class Receiver:
    """A tiny HTTP server: records each POST, answers ``status`` (``location`` for redirects)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self.location: str | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("location", receiver.location)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [json.loads(body)["type"] for _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def service_for(app: Soniq, **overrides: Any) -> WebhookService:
    """A service with short retries that reloads endpoints on every tick (it listens to events
    from the first tick that finds an endpoint)."""
    settings = app.settings.model_copy(update={
        "webhook_retry_delay": 0.01, "webhook_max_retry_delay": 0.05, "webhook_max_attempts": 3,
        "webhook_reload_interval": 0.0, "webhook_timeout": 5.0, **overrides})
    return WebhookService(app.backend, app.events, settings)


async def drain(service: WebhookService, *, until: int = 0, rounds: int = 200) -> None:
    """Tick until nothing is pending (or ``until`` deliveries were seen)."""
    for _ in range(rounds):
        await service.run_once()
        pending = await service_pending(service)
        if not pending:
            return
        await anyio.sleep(0.01)


async def service_pending(service: WebhookService) -> int:
    store = service._backend.webhooks  # type: ignore[attr-defined]
    return len(await store.list_deliveries(endpoint_id=None, status="pending", limit=1000))


# -- the API --------------------------------------------------------------------------------------
async def test_register_list_get_unregister(app: Soniq) -> None:
    created = await app.webhooks.register("https://example.com/hook", events=["job.done"],
                                          description="ci")
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert created["events"] == ["job.done"]
    listed = await app.webhooks.list()
    assert [e["id"] for e in listed] == [created["id"]]
    assert "secret" not in listed[0] and secret not in repr(listed)
    got = await app.webhooks.get(created["id"])
    assert got is not None and got["url"] == "https://example.com/hook"
    assert got["description"] == "ci" and got["events"] == ["job.done"]
    assert await app.webhooks.get("nope") is None
    assert await app.webhooks.unregister(created["id"]) is True
    assert await app.webhooks.unregister(created["id"]) is False
    assert await app.webhooks.list() == []


async def test_the_service_listens_to_events_only_while_endpoints_exist(app: Soniq) -> None:
    service = service_for(app)
    await service.run_once()
    assert not app.events.active  # no endpoint: the job path builds no events at all
    created = await app.webhooks.register("https://example.com/hook", events=["job.done"],
                                          secret="s" * 32)
    await service.run_once()
    assert app.events.active
    assert await app.webhooks.unregister(created["id"]) is True
    await service.run_once()
    assert not app.events.active


async def test_register_validates(app: Soniq) -> None:
    with pytest.raises(ValidationError, match="unknown webhook events"):
        await app.webhooks.register("https://example.com/", events=["job.finished"])
    with pytest.raises(ValidationError, match="http or https"):
        await app.webhooks.register("ftp://example.com/")
    with pytest.raises(ValidationError, match="at least 16"):
        await app.webhooks.register("https://example.com/", secret="short")


# -- SSRF -----------------------------------------------------------------------------------------
REFUSED = [
    "http://127.0.0.1/", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/",
    "http://172.16.0.1/", "http://192.168.1.1/", "http://[::1]/", "http://[fe80::1]/",
    "http://[fc00::1]/", "http://0.0.0.0/", "http://224.0.0.1/", "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/", "http://2130706433/", "http://0x7f000001/",
    "http://017700000001/", "http://127.1/", "http://localhost:8000/", "file:///etc/passwd",
    "gopher://example.com/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_private_targets_are_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        check_target(url, allow_private=False)


async def test_registration_refuses_private_targets_unless_allowed(app: Soniq) -> None:
    for url in ("http://127.0.0.1:9/", "http://169.254.169.254/", "http://0x7f000001/"):
        with pytest.raises(ValidationError, match="allow_private"):
            await app.webhooks.register(url)
    assert await app.webhooks.list() == []
    allowed = await app.webhooks.register("http://127.0.0.1:9/", allow_private=True)
    assert allowed["allow_private"] is True


async def test_a_name_resolving_to_loopback_is_refused_at_send_time() -> None:
    check_target("http://localhost.example/", allow_private=False)  # a name: not decided yet
    with pytest.raises(ValidationError, match="does not resolve|non-public"):
        await resolve_target("http://nonexistent.invalid/", allow_private=False)
    await resolve_target("http://localhost:1/", allow_private=True)


async def test_send_time_check_refuses_a_stored_loopback_name(app: Soniq,
                                                              receiver: Receiver) -> None:
    """An endpoint that slipped past registration (a name) is refused after DNS at send time."""
    from soniq.backends.stores import WebhookEndpoint
    from soniq.ids import new_id

    await app.ensure_initialized()
    port = receiver.url.split(":")[2].split("/")[0]
    endpoint = WebhookEndpoint(
        id=new_id(), url=f"http://localhost:{port}/hook", events=None,
        secrets=json.dumps([{"secret": "s" * 32, "expires_at": None}]), allow_private=False,
        active=True, description=None, created_at=utc_now())
    await app.backend.webhooks.add_endpoint(endpoint)  # type: ignore[attr-defined]
    service = service_for(app, webhook_max_attempts=1)
    await service.reload()

    @app.job(name="ping")
    async def ping() -> None:
        return None

    await app.enqueue("ping")
    await drain(service)
    assert receiver.requests == []
    [delivery] = await app.webhooks.deliveries()
    assert delivery["status"] == "failed" and "loopback" in delivery["last_error"]


async def test_a_name_resolving_to_a_private_address_is_refused_after_dns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from soniq.features import webhooks

    async def fake_getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        answers = {"evil.example": "127.0.0.1", "meta.example": "169.254.169.254",
                   "v6.example": "::1", "public.example": "93.184.216.34"}
        family = socket.AF_INET6 if ":" in answers[host] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(webhooks.anyio, "getaddrinfo", fake_getaddrinfo)
    for host in ("evil.example", "meta.example", "v6.example"):
        check_target(f"http://{host}/", allow_private=False)  # a name passes registration
        with pytest.raises(ValidationError, match="non-public"):
            await resolve_target(f"http://{host}/", allow_private=False)
    await resolve_target("http://public.example/", allow_private=False)


async def test_redirects_are_not_followed(app: Soniq, receiver: Receiver) -> None:
    target = Receiver()
    try:
        receiver.status, receiver.location = 302, target.url
        await app.webhooks.register(receiver.url, allow_private=True, events=["job.enqueued"])
        service = service_for(app, webhook_max_attempts=1)
        await service.reload()

        @app.job(name="ping")
        async def ping() -> None:
            return None

        await app.enqueue("ping")
        await drain(service)
        assert len(receiver.requests) == 1 and target.requests == []
        [delivery] = await app.webhooks.deliveries()
        assert delivery["status"] == "failed" and delivery["last_status_code"] == 302
    finally:
        target.close()


# -- delivery -------------------------------------------------------------------------------------
async def test_a_jobs_lifecycle_is_delivered_signed(app: Soniq, receiver: Receiver) -> None:
    created = await app.webhooks.register(receiver.url, allow_private=True)
    service = service_for(app)
    await service.reload()

    @app.job(name="ok")
    async def ok() -> int:
        return 1

    @app.job(name="boom", retries=1, retry_delay=0)
    async def boom() -> None:
        raise RuntimeError("kaput")

    good = await app.enqueue("ok")
    bad = await app.enqueue("boom")
    await app.run_worker(run_once=True)
    await drain(service)

    by_job: dict[str, list[str]] = {}
    for headers, body in receiver.requests:
        assert verify_signature(created["secret"], headers, body)
        payload = json.loads(body)
        by_job.setdefault(payload["data"]["job_id"], []).append(payload["type"])
        assert headers["content-type"] == "application/json"
    # A batch is sent concurrently: delivery order is not event order (receivers use
    # the payload's timestamp).
    assert sorted(by_job[good]) == ["job.done", "job.enqueued", "job.started"]
    assert sorted(by_job[bad]) == ["job.dead_letter", "job.enqueued", "job.failed",
                                   "job.started", "job.started"]
    dead = [json.loads(b) for _, b in receiver.requests if json.loads(b)["type"] == "job.dead_letter"]
    assert "kaput" in dead[0]["data"]["error"] and dead[0]["data"]["attempt"] == 2
    deliveries = await app.webhooks.deliveries(endpoint_id=created["id"])
    assert len(deliveries) == 8 and {d["status"] for d in deliveries} == {"delivered"}
    assert len({d["id"] for d in deliveries}) == 8
    assert {h["webhook-id"] for h, _ in receiver.requests} == {d["id"] for d in deliveries}


async def test_event_filter(app: Soniq, receiver: Receiver) -> None:
    await app.webhooks.register(receiver.url, allow_private=True, events=["job.done"])
    service = service_for(app)
    await service.reload()

    @app.job(name="ok")
    async def ok() -> None:
        return None

    await app.enqueue("ok")
    await app.run_worker(run_once=True)
    await drain(service)
    assert receiver.events() == ["job.done"]


async def test_rotated_secrets_both_verify(app: Soniq, receiver: Receiver) -> None:
    created = await app.webhooks.register(receiver.url, allow_private=True,
                                          events=["job.enqueued"])
    new = await app.webhooks.rotate_secret(created["id"])
    assert new is not None and new != created["secret"]
    assert await app.webhooks.rotate_secret("00000000-0000-7000-8000-000000000000") is None
    service = service_for(app)
    await service.reload()

    @app.job(name="ok")
    async def ok() -> None:
        return None

    await app.enqueue("ok")
    await drain(service)
    [(headers, body)] = receiver.requests
    assert len(headers["webhook-signature"].split()) == 2
    assert verify_signature(created["secret"], headers, body)
    assert verify_signature(new, headers, body)
    assert not verify_signature("whsec_" + "A" * 44, headers, body)
    assert not verify_signature(new, headers, body + b" ")
    moved = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)}
    assert not verify_signature(new, moved, body)
    assert not verify_signature(new, headers, body, now=int(headers["webhook-timestamp"]) + 301)


def test_signature_covers_id_timestamp_and_body() -> None:
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type":"job.done"}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000",
               "webhook-signature": sign(secret, "msg_1", 1700000000, body)}
    assert verify_signature(secret, headers, body, now=1700000000)
    assert not verify_signature(secret, {**headers, "webhook-id": "msg_2"}, body, now=1700000000)
    assert not verify_signature(secret, headers, body, now=1700000000 + 3600)


async def test_a_failing_receiver_is_retried_then_failed(app: Soniq, receiver: Receiver) -> None:
    receiver.status = 500
    await app.webhooks.register(receiver.url, allow_private=True, events=["job.enqueued"])
    service = service_for(app, webhook_max_attempts=3)
    await service.reload()

    @app.job(name="ok")
    async def ok() -> None:
        return None

    await app.enqueue("ok")
    await service.run_once()
    [first] = await app.webhooks.deliveries()
    assert first["status"] == "pending" and first["attempts"] == 1
    assert first["last_status_code"] == 500 and first["last_error"] == "HTTP 500"
    assert first["next_attempt_at"] > utc_now() - timedelta(seconds=1)
    await drain(service)
    [last] = await app.webhooks.deliveries(status="failed")
    assert last["attempts"] == 3 and last["last_status_code"] == 500
    assert len(receiver.requests) == 3
    assert len({h["webhook-id"] for h, _ in receiver.requests}) == 1  # same id on every retry


async def test_two_services_never_send_a_delivery_twice(app: Soniq, receiver: Receiver) -> None:
    await app.webhooks.register(receiver.url, allow_private=True, events=["job.enqueued"])
    first, second = service_for(app), service_for(app)
    second._events = first._events  # only one turns events into rows; both send
    await first.reload()

    @app.job(name="ok")
    async def ok() -> None:
        return None

    for _ in range(40):
        await app.enqueue("ok")
    await first.flush()
    async with anyio.create_task_group() as tg:
        for service in (first, second, first, second):
            tg.start_soon(service.run_once)
    await drain(first)
    ids = [h["webhook-id"] for h, _ in receiver.requests]
    assert len(ids) == 40 == len(set(ids))


async def test_secrets_never_leak(app: Soniq, receiver: Receiver,
                                  caplog: pytest.LogCaptureFixture) -> None:
    # soniq's own loggers and httpx's; aiosqlite's DEBUG log echoes every bind parameter (job
    # arguments too), which is the driver's and is off unless the user enables it.
    for name in ("soniq", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    receiver.status = 500
    created = await app.webhooks.register(receiver.url, allow_private=True,
                                          events=["job.enqueued"])
    secret = created["secret"]
    rotated = await app.webhooks.rotate_secret(created["id"])
    service = service_for(app, webhook_max_attempts=2)
    await service.reload()

    @app.job(name="ok")
    async def ok() -> None:
        return None

    await app.enqueue("ok")
    await drain(service)
    endpoint = await app.backend.webhooks.get_endpoint(created["id"])  # type: ignore[attr-defined]
    shown = " ".join([caplog.text, repr(endpoint), repr(service), repr(app.webhooks),
                      repr(await app.webhooks.list()), repr(await app.webhooks.deliveries())])
    assert rotated is not None
    assert secret not in shown and rotated not in shown
    with pytest.raises(ValidationError) as refused:
        await app.webhooks.register("http://10.0.0.1/", secret=secret)
    assert secret not in str(refused.value)


async def test_full_buffer_drops_and_counts(app: Soniq, receiver: Receiver) -> None:
    await app.webhooks.register(receiver.url, allow_private=True, events=["job.enqueued"])
    service = service_for(app)
    service._buffer_size = 2
    await service.reload()

    @app.job(name="ok")
    async def ok() -> None:
        return None

    for _ in range(5):
        await app.enqueue("ok")
    assert service.dropped == 3
    await drain(service)
    assert len(receiver.requests) == 2


async def test_idle_without_endpoints(app: Soniq) -> None:
    service = service_for(app)
    assert await service.run_once() == 0

    @app.job(name="ok")
    async def ok() -> None:
        return None

    await app.enqueue("ok")
    assert await service.run_once() == 0 and await app.webhooks.deliveries() == []


async def test_every_worker_runs_the_service(backend_name: str, database_url: str | None,
                                             receiver: Receiver) -> None:
    """End to end: an endpoint registered by one app is used by another app's worker."""
    from tests.helpers import running_worker

    def make() -> Soniq:
        return Soniq(database_url=database_url,
                     backend=backend_name if database_url is None else None,
                     poll_interval=0.05, webhook_poll_interval=0.05, webhook_reload_interval=0.1)

    worker_app = make()
    admin = worker_app if backend_name == "memory" else make()
    try:
        created = await admin.webhooks.register(receiver.url, allow_private=True,
                                                events=["job.done"])

        @worker_app.job(name="ok")
        async def ok() -> None:
            return None

        async with running_worker(worker_app):
            await anyio.sleep(0.3)  # the service has read the endpoint list
            job_id = await worker_app.enqueue("ok")
            await wait_for(lambda: len(receiver.requests) == 1)
        [(headers, body)] = receiver.requests
        assert verify_signature(created["secret"], headers, body)
        assert json.loads(body)["data"]["job_id"] == job_id
    finally:
        await worker_app.close()
        await admin.close()


async def test_a_receiver_that_never_answers_does_not_hold_up_writing_events(app: Soniq) -> None:
    """While a send hangs for the whole webhook_timeout, new events still become delivery rows
    (otherwise the bounded buffer fills and drops them)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    accepted = anyio.Event()

    async def never_answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            accepted.set()
            await anyio.sleep_forever()

    @app.job(name="hooked")
    async def hooked() -> None: ...

    await app.webhooks.register(f"http://127.0.0.1:{port}/hook", events=["job.enqueued"],
                                allow_private=True)
    service = service_for(app, webhook_timeout=60.0, webhook_poll_interval=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, never_answer)
        await tg.start(service.run)
        await wait_for(lambda: app.events.active, message="the service to find the endpoint")
        await app.enqueue(hooked)
        with anyio.fail_after(10):
            await accepted.wait()  # the first delivery is now stuck in its send
        for _ in range(3):
            await app.enqueue(hooked)
        await wait_for(lambda: _count_deliveries(app, 4), message="later events written as rows")
        tg.cancel_scope.cancel()
    await listener.aclose()


async def _count_deliveries(app: Soniq, expected: int) -> bool:
    store = app.backend.webhooks  # type: ignore[attr-defined]
    deliveries = await store.list_deliveries(endpoint_id=None, status=None, limit=100)
    return len(deliveries) >= expected
