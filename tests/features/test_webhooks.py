"""Webhooks (``app.webhooks``, :class:`WebhookService`) on every backend, under asyncio and trio.

A real HTTP server on 127.0.0.1 (a thread) receives the deliveries, so endpoints use
``allow_private=True``; the service is driven with ``tick()`` instead of waiting for ticks.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import socket
import sqlite3
import ssl
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from cryptography.fernet import Fernet

from soniq import Soniq
from soniq.backends.postgres import webhooks as pg_webhooks
from soniq.backends.stores import WebhookEvent, webhook_payload
from soniq.errors import ConfigurationError, DecryptionError, ValidationError
from soniq.features.signing import Signing
from soniq.features.webhooks import (
    Resolver,
    Webhooks,
    WebhookService,
    check_target,
    resolve_target,
    sign,
    verify_signature,
)
from soniq.runtime.cleanup import Cleanup
from soniq.serialization import utc_now
from soniq.types import WorkerInfo
from tests.helpers import on_connection, running_worker, wait_for, wait_for_status

pytestmark = pytest.mark.anyio


class Receiver:
    """A tiny HTTP server: records each POST, answers ``status`` (``location`` for redirects).
    With ``tls`` (a server context) it speaks https."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
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
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/hook"
        # A short poll: shutdown() waits for it (the default 0.5 s was half of most tests here).
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,),
                                       daemon=True)
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


def service_for(app: Soniq, *, resolver: Resolver | None = None,
                ssl_context: ssl.SSLContext | None = None, **overrides: Any) -> WebhookService:
    """A service with short retries that reloads endpoints on every tick (it listens to events
    from the first tick that finds an endpoint)."""
    settings = app.settings.model_copy(update={
        "webhook_retry_delay": 0.01, "webhook_max_retry_delay": 0.05, "webhook_max_attempts": 3,
        "webhook_reload_interval": 0.0, "webhook_timeout": 5.0, **overrides})
    return WebhookService(app.backend, app.events, settings, resolver=resolver,
                          ssl_context=ssl_context)


async def loaded_service(app: Soniq) -> WebhookService:
    """:func:`service_for` with the endpoints already loaded (so it records events at once)."""
    service = service_for(app)
    await service.reload()
    return service


async def drain(service: WebhookService, *, until: int = 0, rounds: int = 200) -> None:
    """Tick until nothing is pending (or ``until`` deliveries were seen)."""
    for _ in range(rounds):
        await service.tick()
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


async def test_the_service_listens_to_events_only_while_endpoints_exist(
        backend_name: str, app: Soniq) -> None:
    service = service_for(app)
    await service.tick()
    assert not app.events.active  # no endpoint: the job path builds no events at all
    created = await app.webhooks.register("https://example.com/hook", events=["job.done"],
                                          secret="s" * 32)
    await service.tick()
    # PostgreSQL's finish statement writes job.done itself: no event is built for it.
    assert app.events.wants("done") is (backend_name != "postgres")
    assert not app.events.wants("started") and not app.events.wants("enqueued")
    # ... it records its events in the backend's event log, which the webhook store reads.
    log = getattr(app.backend, "events", None)
    assert getattr(log, "recording", False) is (backend_name == "postgres")
    enqueued = await app.webhooks.register("https://example.com/hook", events=["job.enqueued"])
    await service.tick()
    assert app.events.wants("enqueued")
    assert await app.webhooks.unregister(created["id"]) is True
    await service.tick()
    # Only job.enqueued is wanted: the finish statements stop writing deliveries.
    assert app.events.wants("enqueued") and not getattr(log, "recording", False)
    assert await app.webhooks.unregister(enqueued["id"]) is True
    await service.tick()
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

    async def fake_getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        answers = {"evil.example": "127.0.0.1", "meta.example": "169.254.169.254",
                   "v6.example": "::1", "public.example": "93.184.216.34"}
        family = socket.AF_INET6 if ":" in answers[host] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(anyio, "getaddrinfo", fake_getaddrinfo)
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
    service = await loaded_service(app)

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


async def test_every_backend_writes_the_same_payload(app: Soniq) -> None:
    """The store builds the body (in SQL on PostgreSQL): byte for byte ``webhook_payload``, also
    for text that JSON must escape; one row per subscribed endpoint, none for the others.
    (PostgreSQL records the events in its log and writes the rows when they are listed.)"""
    everything = await app.webhooks.register("https://example.com/a")
    only_done = await app.webhooks.register("https://example.com/b", events=["job.done"])
    store = app.backend.webhooks  # type: ignore[attr-defined]
    at = datetime(2026, 12, 6, 1, 2, 3, 450, tzinfo=UTC)
    odd = 'a "quoted" back\\slash, new\nline, tab\t, \x01, é ☃ 𝄞'
    events = [WebhookEvent("job.failed", str(uuid.uuid4()), odd, "q-1", 2, odd, at),
              WebhookEvent("job.done", str(uuid.uuid4()), "ok", "default", 1, None,
                           at.replace(microsecond=0))]
    assert await store.add_events(events) == 3
    rows = await store.list_deliveries(endpoint_id=None, status="pending", limit=10)
    by_endpoint = {(d.endpoint_id, d.event): d.payload for d in rows}
    assert by_endpoint == {(everything["id"], "job.failed"): webhook_payload(events[0]),
                           (everything["id"], "job.done"): webhook_payload(events[1]),
                           (only_done["id"], "job.done"): webhook_payload(events[1])}
    failed = json.loads(webhook_payload(events[0]))
    assert failed == {"type": "job.failed", "timestamp": "2026-12-06T01:02:03.000450+00:00",
                      "data": {"job_id": events[0].job_id, "job_name": odd, "queue": "q-1",
                               "attempt": 2, "error": odd}}
    assert json.loads(webhook_payload(events[1]))["timestamp"] == "2026-12-06T01:02:03.000000+00:00"


async def test_postgres_writes_a_batch_once(backend_name: str, app: Soniq) -> None:
    """A batch recorded again (a retry after a commit whose answer was lost) adds no delivery:
    the delivery id is a digest of the event and the endpoint."""
    if backend_name != "postgres":
        pytest.skip("memory and SQLite never write a batch without knowing whether it landed")
    await app.webhooks.register("https://example.com/a")
    store = app.backend.webhooks  # type: ignore[attr-defined]
    batch = [WebhookEvent("job.started", str(uuid.uuid4()), "ok", "default", 1, None, utc_now())]
    assert await store.add_events(batch) == 1
    assert await store.add_events(batch) == 1
    [row] = await store.list_deliveries(endpoint_id=None, status=None, limit=10)
    stored = uuid.UUID(row.id)  # a UUIDv7 of the event's time: inserts stay time-ordered
    assert stored.version == 7 and stored.variant == uuid.RFC_4122
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert stored.int >> 80 == (batch[0].at - epoch) // timedelta(milliseconds=1)
    again = [batch[0]._replace(at=batch[0].at + timedelta(seconds=1))]  # a replayed job's event
    assert await store.add_events(again) == 1
    assert len(await store.list_deliveries(endpoint_id=None, status=None, limit=10)) == 2


async def test_postgres_turns_its_event_log_into_a_window_of_deliveries(
        backend_name: str, database_url: str, app: Soniq,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL events wait in a log, one row per batch and endpoint, and become delivery
    rows only while their endpoint has fewer than a window of pending ones: a receiver that takes
    nothing holds the window, not a row per event. Each event is delivered once, in order of its
    batch, as the window frees up; another endpoint's window is its own."""
    if backend_name != "postgres":
        pytest.skip("memory and SQLite write deliveries directly (no event log)")
    monkeypatch.setattr(pg_webhooks, "WINDOW", 15)
    monkeypatch.setattr(pg_webhooks, "TAKE", 1)
    slow = await app.webhooks.register("https://example.com/slow")
    other = await app.webhooks.register("https://example.com/other", events=["job.failed"])
    store = app.backend.webhooks  # type: ignore[attr-defined]
    job_ids = [str(uuid.uuid4()) for _ in range(50)]
    for first in range(0, 50, 10):  # five batches of ten job.done events
        assert await store.add_events([
            WebhookEvent("job.done", job_id, "ok", "default", 1, None, utc_now())
            for job_id in job_ids[first:first + 10]]) == 10
    failed = WebhookEvent("job.failed", job_ids[0], "ok", "default", 1, "boom", utc_now())
    assert await store.add_events([failed]) == 2

    async def pending(endpoint_id: str) -> list[str]:
        rows = await store.list_deliveries(endpoint_id=endpoint_id, status="pending", limit=100)
        return [json.loads(d.payload)["data"]["job_id"] for d in rows]

    async def log_rows() -> int:
        return int(await on_connection(database_url, lambda conn: conn.fetchval(
            "SELECT count(*) FROM soniq_webhook_events")))

    # Each listing takes one log row per endpoint with room: 10, then 20 (>= 15): stop.
    assert len(await pending(slow["id"])) == 10
    assert len(await pending(slow["id"])) == 20
    assert len(await pending(slow["id"])) == 20 and await log_rows() == 4
    assert await pending(other["id"]) == [job_ids[0]]  # not held up by the full window
    # The receiver takes the window: the log is turned into the rest, each event once.
    delivered: list[str] = []
    while True:
        claimed = await store.claim(utc_now(), lease_until=utc_now() + timedelta(minutes=1),
                                    limit=100)
        if not claimed:
            break
        for d in claimed:
            delivered.append(json.loads(d.payload)["data"]["job_id"])
            assert await store.finish(d.id, lease_until=d.lease_until, status="delivered",
                                      attempts=1, next_attempt_at=utc_now(), status_code=200,
                                      error=None, delivered_at=utc_now())
    assert sorted(delivered) == sorted([*job_ids, job_ids[0], job_ids[0]])  # + both job.failed
    assert await log_rows() == 0


async def test_postgres_drops_log_rows_no_receiver_took_within_the_retention(
        backend_name: str, database_url: str, app: Soniq,
        caplog: pytest.LogCaptureFixture) -> None:
    """Log rows an endpoint never took (its window stayed full for the whole retention) are
    deleted by the prune, with a warning counting their events; unregistering an endpoint
    deletes its rows at once."""
    if backend_name != "postgres":
        pytest.skip("memory and SQLite write deliveries directly (no event log)")
    kept = await app.webhooks.register("https://example.com/kept")
    gone = await app.webhooks.register("https://example.com/gone")
    store = app.backend.webhooks  # type: ignore[attr-defined]
    events = [WebhookEvent("job.done", str(uuid.uuid4()), "ok", "default", 1, None, utc_now())
              for _ in range(3)]
    assert await store.add_events(events) == 6

    async def log_rows() -> dict[str, int]:
        rows = await on_connection(database_url, lambda conn: conn.fetch(
            "SELECT endpoint_id::text AS e, sum(cardinality(job_ids))::int AS n "
            "FROM soniq_webhook_events GROUP BY endpoint_id"))
        return {row["e"]: row["n"] for row in rows}

    assert await log_rows() == {kept["id"]: 3, gone["id"]: 3}
    assert await app.webhooks.unregister(gone["id"])
    assert await log_rows() == {kept["id"]: 3}
    service = service_for(app)
    week = timedelta(seconds=app.settings.webhook_delivery_retention)
    with caplog.at_level(logging.WARNING, logger="soniq.webhooks"):
        assert await service.prune(now=utc_now() + week - timedelta(minutes=1)) == 0
        assert await log_rows() == {kept["id"]: 3}
        assert not caplog.records
        await service.prune(now=utc_now() + week + timedelta(minutes=1))
    assert await log_rows() == {}
    assert ["3 webhook event(s) expired before an endpoint took them" in r.getMessage()
            for r in caplog.records] == [True]


async def test_postgres_writes_started_at_the_heartbeat_while_a_job_runs(
        backend_name: str, app: Soniq) -> None:
    """On PostgreSQL the finish writes an attempt's events; a job still running at a heartbeat
    gets its job.started then, and the finish does not write it again."""
    if backend_name != "postgres":
        pytest.skip("the other backends record job.started from the executor's event")
    await app.webhooks.register("https://example.com/a", events=["job.started", "job.done"])
    release = anyio.Event()

    @app.job(name="slow")
    async def slow() -> None:
        await release.wait()

    job_id = await app.enqueue("slow")
    store = app.backend.webhooks  # type: ignore[attr-defined]

    async def events() -> list[tuple[str, int]]:
        rows = await store.list_deliveries(endpoint_id=None, status=None, limit=10)
        return sorted((d.event, json.loads(d.payload)["data"]["attempt"]) for d in rows)

    async with running_worker(app):
        await wait_for(lambda: events(), message="the heartbeat to write job.started")
        assert await events() == [("job.started", 1)]
        release.set()
        await wait_for_status(app, job_id, "done")
    assert await events() == [("job.done", 1), ("job.started", 1)]


async def test_a_delivery_whose_endpoint_vanished_is_finished_as_failed(
        backend_name: str, database_url: str, app: Soniq, receiver: Receiver) -> None:
    """PostgreSQL keeps no foreign key from deliveries to endpoints (its check locked the
    endpoint once per row): a delivery written while its endpoint was being unregistered is
    closed by the first worker that picks it up, never retried forever."""
    if backend_name != "postgres":
        pytest.skip("the other backends write the fan-out and the unregister under one lock")
    created = await app.webhooks.register(receiver.url, allow_private=True)
    service = await loaded_service(app)
    store = app.backend.webhooks  # type: ignore[attr-defined]
    orphan = WebhookEvent("job.done", str(uuid.uuid4()), "ok", "default", 1, None, utc_now())
    assert await store.add_events([orphan]) == 1
    assert len(await store.list_deliveries(endpoint_id=None, status=None, limit=10)) == 1
    # The endpoint goes, its delivery stays (what the race leaves behind).
    await on_connection(database_url, lambda conn: conn.execute(
        "DELETE FROM soniq_webhook_endpoints WHERE id = $1::uuid", created["id"]))
    assert await service.deliver_due() == 1
    [row] = await store.list_deliveries(endpoint_id=created["id"], status=None, limit=10)
    assert (row.status, row.last_error) == ("failed", "the webhook endpoint was unregistered")
    assert receiver.requests == []


async def test_cancelling_a_waiting_job_is_delivered(app: Soniq, receiver: Receiver) -> None:
    """``cancel_job`` ends a waiting job itself, with no worker involved: its job.cancelled is
    delivered too (on PostgreSQL the cancel statement writes it, from any process)."""
    await app.webhooks.register(receiver.url, allow_private=True, events=["job.cancelled"])
    service = await loaded_service(app)

    @app.job(name="ok")
    async def ok() -> None:
        return None

    job_id = await app.enqueue("ok")
    kept = await app.enqueue("ok")
    assert await app.cancel_job(job_id) is True
    assert await app.cancel_job(job_id) is False  # already final: nothing more
    await drain(service)
    [(_, body)] = receiver.requests
    payload = json.loads(body)
    assert payload["type"] == "job.cancelled"
    assert (payload["data"]["job_id"], payload["data"]["attempt"]) == (job_id, 0)
    assert kept != job_id


async def test_jobs_rescued_from_a_silent_worker_are_delivered(
        app: Soniq, receiver: Receiver) -> None:
    """The cleanup's rescue reports what it decided like a worker would: job.failed for a job
    queued again, then job.dead_letter when its attempts are spent (PostgreSQL: the rescue
    statement writes them)."""
    await app.webhooks.register(receiver.url, allow_private=True,
                                events=["job.failed", "job.dead_letter"])
    service = await loaded_service(app)

    @app.job(name="poison", retries=1)
    async def poison() -> None: ...

    job_id = await app.enqueue(poison)
    for n in range(2):
        dead = WorkerInfo(f"00000000-0000-7000-8000-00000000000{n}", "h", n, None, 1)
        await app.backend.register_worker(dead, now=utc_now() - timedelta(hours=1))
        assert len(await app.backend.claim_jobs(dead.id, None, 1)) == 1
        cleanup = Cleanup(app.backend, interval=0.001, stale_after=60.0, error_retry_delay=1.0,
                          events=app.events)
        await wait_for(cleanup.tick, message="a cleanup round to lead")  # one per interval
    await drain(service)
    sent = sorted((json.loads(body) for _, body in receiver.requests),
                  key=lambda p: p["data"]["attempt"])
    assert [(p["type"], p["data"]["job_id"], p["data"]["attempt"]) for p in sent] == [
        ("job.failed", job_id, 1), ("job.dead_letter", job_id, 2)]
    assert all(p["data"]["error"].startswith("WorkerLost: worker 00000000-") for p in sent)


async def test_postgres_a_cancel_or_rescue_by_a_process_that_reads_nothing_is_delivered(
        pg_url: str, receiver: Receiver) -> None:
    """A cancel from a process that runs no webhook service (the dashboard, a script), or a
    rescue by a worker whose service has not loaded the endpoints yet, still records its event
    while an endpoint exists (the database names the webhook store as the log's reader), and the
    last endpoint's removal stops it."""
    async with Soniq(database_url=pg_url) as app, Soniq(database_url=pg_url,
                                                      enqueue_validation="none") as other:
        endpoint = await app.webhooks.register(
            receiver.url, allow_private=True,
            events=["job.cancelled", "job.failed", "job.dead_letter"])
        assert not other.backend.events.recording  # type: ignore[attr-defined]
        waiting = await other.enqueue("ok", args={})
        assert await other.cancel_job(waiting) is True
        running = await other.enqueue("ok", args={})
        dead = WorkerInfo("00000000-0000-7000-8000-000000000001", "h", 1, None, 1)
        await other.backend.register_worker(dead, now=utc_now() - timedelta(hours=1))
        assert len(await other.backend.claim_jobs(dead.id, None, 1)) == 1
        assert await other.backend.rescue_jobs(60.0) == [running]
        await drain(await loaded_service(app))
        sent = sorted((json.loads(body) for _, body in receiver.requests),
                      key=lambda p: p["type"])
        assert [(p["type"], p["data"]["job_id"]) for p in sent] == [
            ("job.cancelled", waiting), ("job.failed", running)]

        await app.webhooks.unregister(endpoint["id"])
        gone = await other.enqueue("ok", args={})
        assert await other.cancel_job(gone) is True
        assert await on_connection(pg_url, lambda c: c.fetchval(
            "SELECT count(*) FROM soniq_events")) == 0
        assert await on_connection(pg_url, lambda c: c.fetchval(
            "SELECT count(*) FROM soniq_event_readers")) == 0


async def test_event_filter(app: Soniq, receiver: Receiver) -> None:
    await app.webhooks.register(receiver.url, allow_private=True, events=["job.done"])
    service = await loaded_service(app)

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
    service = await loaded_service(app)

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
    await service.tick()
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
            tg.start_soon(service.tick)
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
    assert await service.tick() == 0

    @app.job(name="ok")
    async def ok() -> None:
        return None

    await app.enqueue("ok")
    assert await service.tick() == 0 and await app.webhooks.deliveries() == []


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


# -- DNS rebinding: the address checked is the address connected to --------------------------------
class FakeDNS:
    """An injectable resolver (the only mock in these tests): ``answers[host]`` is a list of
    answers, one consumed per lookup and the last one repeated -- a DNS server with TTL 0 that
    can re-point a name between two lookups. Unknown names do not resolve."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answers = self.answers.get(host)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers.pop(0) if len(answers) > 1 else answers[0]


async def _enqueue_one(app: Soniq) -> str:
    """Enqueue a ``ping`` job (registered on first use): one ``job.enqueued`` event."""
    if app.registry.get("ping") is None:
        @app.job(name="ping")
        async def ping() -> None:
            return None

    return await app.enqueue("ping")


async def test_a_name_rebound_to_loopback_after_the_check_is_refused_at_send_time(
        app: Soniq, receiver: Receiver) -> None:
    """Public when checked at registration, 127.0.0.1 when sent: the send resolves once, refuses,
    and nothing reaches the local server that is listening on that port."""
    url = f"http://rebind.example:{receiver.port}/hook"
    dns = FakeDNS({"rebind.example": [["93.184.216.34"], ["127.0.0.1"]]})
    assert await resolve_target(url, allow_private=False, resolver=dns) == [
        ipaddress.ip_address("93.184.216.34")]  # what a check at configuration time sees
    await app.webhooks.register(url, events=["job.enqueued"])
    service = service_for(app, resolver=dns, webhook_max_attempts=1)
    await service.reload()
    await _enqueue_one(app)
    await drain(service)
    assert receiver.requests == []
    [delivery] = await app.webhooks.deliveries()
    assert delivery["status"] == "failed" and delivery["last_status_code"] is None
    assert delivery["last_error"] == (
        "webhook host 'rebind.example' resolves to non-public address 127.0.0.1; refused")
    assert dns.lookups == ["rebind.example", "rebind.example"]  # one lookup per send, no more


async def test_a_rebound_name_is_delivered_to_the_resolved_address_when_private_is_allowed(
        app: Soniq, receiver: Receiver) -> None:
    """With webhook_allow_private the same rebinding name is delivered -- to the address the
    send resolved (the name exists only in the fake resolver, so nothing else could have
    connected), with the name kept in the Host header."""
    url = f"http://rebind.example:{receiver.port}/hook"
    dns = FakeDNS({"rebind.example": [["93.184.216.34"], ["127.0.0.1"]]})
    await resolve_target(url, allow_private=False, resolver=dns)
    created = await app.webhooks.register(url, events=["job.enqueued"])
    assert created["allow_private"] is False  # the setting, not the endpoint, allows it
    service = service_for(app, resolver=dns, webhook_allow_private=True)
    await service.reload()
    await _enqueue_one(app)
    await drain(service)
    [(headers, body)] = receiver.requests
    assert headers["host"] == f"rebind.example:{receiver.port}"
    assert verify_signature(created["secret"], headers, body)
    [delivery] = await app.webhooks.deliveries()
    assert delivery["status"] == "delivered"
    assert dns.lookups == ["rebind.example", "rebind.example"]


async def test_one_non_public_answer_among_several_refuses_the_target() -> None:
    dns = FakeDNS({"mixed.example": [["93.184.216.34", "10.0.0.7"]],
                   "v6mapped.example": [["::ffff:169.254.169.254"]],
                   "public.example": [["93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"]],
                   "junk.example": [["not-an-address"]], "empty.example": [[]]})
    with pytest.raises(ValidationError, match="non-public address 10.0.0.7"):
        await resolve_target("https://mixed.example/", allow_private=False, resolver=dns)
    with pytest.raises(ValidationError, match="non-public address ::ffff:"):
        await resolve_target("https://v6mapped.example/", allow_private=False, resolver=dns)
    with pytest.raises(ValidationError, match="not an address"):
        await resolve_target("https://junk.example/", allow_private=True, resolver=dns)
    with pytest.raises(ValidationError, match="no address"):
        await resolve_target("https://empty.example/", allow_private=True, resolver=dns)
    with pytest.raises(ValidationError, match="does not resolve"):
        await resolve_target("https://unknown.example/", allow_private=False, resolver=dns)
    assert [str(ip) for ip in await resolve_target(
        "https://public.example/", allow_private=False, resolver=dns)] == [
        "93.184.216.34", "2606:2800:220:1::1"]  # order kept, duplicates dropped


async def test_the_next_checked_address_is_tried_only_when_connecting_fails(
        app: Soniq, receiver: Receiver) -> None:
    """127.0.0.2 refuses the connection (the receiver listens on 127.0.0.1 only), so the send
    moves on to the next address the resolver gave -- never to a fresh lookup."""
    dns = FakeDNS({"multi.example": [["127.0.0.2", "127.0.0.1"]]})
    await app.webhooks.register(f"http://multi.example:{receiver.port}/hook",
                                events=["job.enqueued"])
    service = service_for(app, resolver=dns, webhook_allow_private=True, webhook_max_attempts=1)
    await service.reload()
    await _enqueue_one(app)
    await drain(service)
    assert len(receiver.requests) == 1
    [delivery] = await app.webhooks.deliveries()
    assert delivery["status"] == "delivered" and dns.lookups == ["multi.example"]


def tls_contexts(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for ``name`` from a throw-away CA, client context that
    trusts only that CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "soniq test CA")])

    def builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(hours=1))
                .not_valid_after(now + timedelta(days=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False))

    ca = (builder(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
              key_encipherment=False, data_encipherment=False, key_agreement=False,
              encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(
        cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


async def test_https_connects_to_the_checked_address_and_verifies_the_name(
        app: Soniq, tmp_path: Path) -> None:
    """The request goes to the pinned address, yet TLS still sends the name as SNI and checks
    the certificate against it: a certificate for another name fails the delivery."""
    server_tls, client_tls = tls_contexts(tmp_path, "hooks.test")
    sni: list[str | None] = []

    def record_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        sni.append(name)

    server_tls.sni_callback = record_sni
    receiver = Receiver(tls=server_tls)
    try:
        dns = FakeDNS({"hooks.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        good = await app.webhooks.register(f"https://hooks.test:{receiver.port}/hook",
                                           events=["job.enqueued"])
        wrong = await app.webhooks.register(f"https://other.test:{receiver.port}/hook",
                                            events=["job.enqueued"])
        service = service_for(app, resolver=dns, ssl_context=client_tls,
                              webhook_allow_private=True, webhook_max_attempts=1)
        await service.reload()
        await _enqueue_one(app)
        await drain(service)
        [(headers, body)] = receiver.requests
        assert headers["host"] == f"hooks.test:{receiver.port}"
        assert verify_signature(good["secret"], headers, body)
        assert "hooks.test" in sni and "other.test" in sni  # SNI is the name, not the address
        [sent] = await app.webhooks.deliveries(endpoint_id=good["id"])
        [refused] = await app.webhooks.deliveries(endpoint_id=wrong["id"])
        assert sent["status"] == "delivered" and refused["status"] == "failed"
        assert "CERTIFICATE_VERIFY_FAILED" in refused["last_error"]
    finally:
        receiver.close()


# -- secrets at rest ------------------------------------------------------------------------------
NEW_KEY = Fernet.generate_key().decode()
OLD_KEY = "old-passphrase-" + "x" * 24
OTHER_KEY = Fernet.generate_key().decode()
SECRET = "whsec_" + base64.b64encode(b"endpoint-secret-0123456789abcdef").decode()


async def raw_secrets(app: Soniq, endpoint_id: str) -> str:
    """The endpoint's secrets column exactly as stored, read around Soniq's own read path."""
    if app.backend.name == "memory":
        return str(app.backend.webhooks._endpoints[endpoint_id].secrets)  # type: ignore[attr-defined]
    if app.backend.name == "sqlite":
        with contextlib.closing(sqlite3.connect(app.settings.database_url)) as db:
            (value,) = db.execute("SELECT secrets FROM soniq_webhook_endpoints WHERE id = ?",
                                  (endpoint_id,)).fetchone()
        return str(value)
    async with app.backend.acquire() as conn:
        return str(await conn.fetchval(
            "SELECT secrets::text FROM soniq_webhook_endpoints WHERE id = $1::uuid", endpoint_id))


def facade_for(app: Soniq, *keys: str) -> Webhooks:
    """``app.webhooks`` as a process configured with ``secret_keys=keys`` would have it."""
    return Webhooks(app.backend, ready=app.ensure_initialized,
                    settings=app.settings.model_copy(update={"secret_keys": list(keys)}))


async def deliver_one(app: Soniq, service: WebhookService) -> None:
    await service.reload()
    await _enqueue_one(app)
    await drain(service)


async def test_secrets_are_encrypted_at_rest_when_keys_are_configured(
        app: Soniq, receiver: Receiver) -> None:
    webhooks = facade_for(app, NEW_KEY)
    created = await webhooks.register(receiver.url, allow_private=True, events=["job.enqueued"],
                                      secret=SECRET)
    stored = await raw_secrets(app, created["id"])
    assert SECRET not in stored and "endpoint-secret" not in stored
    token = json.loads(stored)["$enc"]
    [entry] = json.loads(Signing([NEW_KEY]).decrypt_now(token))
    assert entry == {"secret": SECRET, "expires_at": None}
    rotated = await webhooks.rotate_secret(created["id"])
    assert rotated is not None
    stored = await raw_secrets(app, created["id"])
    assert SECRET not in stored and rotated not in stored and list(json.loads(stored)) == ["$enc"]

    await deliver_one(app, service_for(app, secret_keys=[NEW_KEY]))
    [(headers, body)] = receiver.requests
    assert verify_signature(SECRET, headers, body) and verify_signature(rotated, headers, body)


async def test_without_keys_secrets_are_stored_as_given(app: Soniq) -> None:
    """The documented behaviour without secret_keys: plaintext (the secrets are needed to sign)."""
    created = await app.webhooks.register("https://example.com/hook", secret=SECRET)
    assert json.loads(await raw_secrets(app, created["id"])) == [
        {"secret": SECRET, "expires_at": None}]


async def test_plaintext_secrets_from_before_keys_keep_working_and_get_encrypted(
        app: Soniq, receiver: Receiver) -> None:
    created = await app.webhooks.register(receiver.url, allow_private=True,
                                          events=["job.enqueued"], secret=SECRET)
    assert SECRET in await raw_secrets(app, created["id"])  # written before keys existed
    await deliver_one(app, service_for(app, secret_keys=[NEW_KEY]))
    [(headers, body)] = receiver.requests
    assert verify_signature(SECRET, headers, body)  # still signs with the plaintext secret
    stored = await raw_secrets(app, created["id"])  # and the worker's reload encrypted it
    assert SECRET not in stored
    assert SECRET in Signing([NEW_KEY]).decrypt_now(json.loads(stored)["$enc"])
    again = await raw_secrets(app, created["id"])
    await service_for(app, secret_keys=[NEW_KEY]).reload()
    assert await raw_secrets(app, created["id"]) == again  # current: not rewritten each reload


async def test_a_key_rotation_still_decrypts_then_moves_secrets_to_the_new_key(
        app: Soniq, receiver: Receiver) -> None:
    created = await facade_for(app, OLD_KEY).register(
        receiver.url, allow_private=True, events=["job.enqueued"], secret=SECRET)
    under_old = await raw_secrets(app, created["id"])
    # New key first, old one still listed: the old token decrypts, and the reload re-encrypts.
    await deliver_one(app, service_for(app, secret_keys=[NEW_KEY, OLD_KEY]))
    assert verify_signature(SECRET, *receiver.requests[-1])
    under_new = await raw_secrets(app, created["id"])
    assert under_new != under_old and SECRET not in under_new
    assert Signing([NEW_KEY]).is_current(json.loads(under_new)["$enc"])
    # The old key retired: everything still works with the new key alone.
    await deliver_one(app, service_for(app, secret_keys=[NEW_KEY]))
    assert len(receiver.requests) == 2 and verify_signature(SECRET, *receiver.requests[-1])
    assert await facade_for(app, NEW_KEY).rotate_secret(created["id"]) is not None


async def test_secrets_under_a_missing_key_fail_deliveries_with_the_reason(
        app: Soniq, receiver: Receiver) -> None:
    created = await facade_for(app, OTHER_KEY).register(
        receiver.url, allow_private=True, events=["job.enqueued"], secret=SECRET)
    stored = await raw_secrets(app, created["id"])
    await deliver_one(app, service_for(app, secret_keys=[NEW_KEY], webhook_max_attempts=1))
    assert receiver.requests == []
    assert await raw_secrets(app, created["id"]) == stored  # unreadable: left as it was
    [failed] = await app.webhooks.deliveries()
    assert failed["status"] == "failed" and "not in SONIQ_SECRET_KEYS" in failed["last_error"]
    await deliver_one(app, service_for(app, webhook_max_attempts=1))  # no keys at all
    no_keys = (await app.webhooks.deliveries())[0]
    assert "no secret_keys are configured" in no_keys["last_error"]
    with pytest.raises(ConfigurationError, match="SONIQ_SECRET_KEYS"):
        await app.webhooks.rotate_secret(created["id"])
    with pytest.raises(DecryptionError):
        await facade_for(app, NEW_KEY).rotate_secret(created["id"])


async def test_set_secrets_is_a_compare_and_set(app: Soniq) -> None:
    created = await app.webhooks.register("https://example.com/hook", secret=SECRET)
    store = app.backend.webhooks  # type: ignore[attr-defined]
    current = (await store.get_endpoint(created["id"])).secrets
    newer = json.dumps([{"secret": "n" * 32, "expires_at": None}])
    assert await store.set_secrets(created["id"], newer, expected=current) is True
    stale = json.dumps([{"secret": "s" * 32, "expires_at": None}])
    assert await store.set_secrets(created["id"], stale, expected=current) is False
    assert json.loads((await store.get_endpoint(created["id"])).secrets)[0]["secret"] == "n" * 32


# -- retention ------------------------------------------------------------------------------------
async def _delivered_failed_and_pending(app: Soniq, receiver: Receiver,
                                        service: WebhookService) -> Receiver:
    """One delivered and one failed delivery, then two pending ones; returns the failing
    receiver (to close)."""
    failing = Receiver()
    failing.status = 500
    await app.webhooks.register(receiver.url, allow_private=True, events=["job.enqueued"])
    await app.webhooks.register(failing.url, allow_private=True, events=["job.enqueued"])
    await service.reload()
    await _enqueue_one(app)
    await drain(service)
    await app.enqueue("ping")
    await service.flush()  # written, not sent
    statuses = sorted(d["status"] for d in await app.webhooks.deliveries())
    assert statuses == ["delivered", "failed", "pending", "pending"]
    return failing


async def test_finished_deliveries_are_deleted_after_the_retention(
        app: Soniq, receiver: Receiver) -> None:
    service = service_for(app, webhook_max_attempts=1)
    failing = await _delivered_failed_and_pending(app, receiver, service)
    try:
        assert app.settings.webhook_delivery_retention == 7 * 86_400  # the default
        finished = [d["next_attempt_at"] for d in await app.webhooks.deliveries()
                    if d["status"] != "pending"]  # a finished row's next_attempt_at
        week = timedelta(days=7)
        assert await service.prune(now=min(finished) + week - timedelta(seconds=1)) == 0
        assert await service.prune(now=max(finished) + week + timedelta(seconds=1)) == 2
        left = await app.webhooks.deliveries()
        assert [d["status"] for d in left] == ["pending", "pending"]  # never pruned
        assert await service.prune(now=utc_now() + timedelta(days=3650)) == 0
    finally:
        failing.close()


async def test_retention_is_a_setting(app: Soniq, receiver: Receiver) -> None:
    service = service_for(app, webhook_max_attempts=1, webhook_delivery_retention=60.0)
    failing = await _delivered_failed_and_pending(app, receiver, service)
    try:
        assert await service.prune(now=utc_now() + timedelta(seconds=61)) == 2
    finally:
        failing.close()


async def test_one_worker_prunes_per_cleanup_interval(app: Soniq, receiver: Receiver) -> None:
    first = service_for(app, webhook_max_attempts=1)
    second = service_for(app, webhook_max_attempts=1)
    assert await first.prune_due() is None  # no endpoint loaded: nothing to prune, no query
    failing = await _delivered_failed_and_pending(app, receiver, first)
    try:
        await second.reload()
        later = utc_now() + timedelta(days=8)
        assert await first.prune_due(now=later) == 2  # this round's leader
        assert await second.prune_due(now=later + timedelta(seconds=1)) is None
        interval = timedelta(seconds=app.settings.cleanup_interval)
        assert await second.prune_due(now=later + interval) == 0
    finally:
        failing.close()


async def test_a_running_worker_prunes_finished_deliveries(
        backend_name: str, database_url: str | None, receiver: Receiver) -> None:
    """End to end through the worker's task group: delivered, then gone once past retention."""
    app = Soniq(database_url=database_url, backend=backend_name if database_url is None else None,
                poll_interval=0.05, webhook_poll_interval=0.05, webhook_reload_interval=0.05,
                cleanup_interval=0.1, webhook_delivery_retention=0.2)
    try:
        await app.webhooks.register(receiver.url, allow_private=True, events=["job.done"])
        await _enqueue_one(app)
        async with app.running_worker():
            await wait_for(lambda: len(receiver.requests) == 1, message="the delivery")

            async def pruned() -> bool:
                return await app.webhooks.deliveries() == []

            await wait_for(pruned, message="the delivered row to be pruned")
    finally:
        await app.close()
