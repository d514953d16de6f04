"""Webhooks: ``app.webhooks`` (register, list, get, unregister, rotate_secret, deliveries) and the
:class:`WebhookService` every worker runs.

Endpoints live in storage (:class:`~soniq.backends.stores.WebhookStore`, ``backend.webhooks``), so
an endpoint registered by any process is used by every worker sharing the database: each worker's
service reloads the endpoint list every ``webhook_reload_interval`` seconds (one small query; with
no endpoints nothing else happens).

Delivery is an outbox:

1. The service subscribes to ``app.events`` while endpoints exist (with none, the runtime builds
   no events for it). For an event that matches an endpoint, the callback appends a delivery to a
   bounded in-memory buffer and returns -- the job path never waits on the database or the
   network. A full buffer drops the event, counts it and logs a warning.
2. Each tick the buffer is written in one batch (``pending`` delivery rows), in a loop of its
   own: a receiver that hangs delays sending, never the writing.
3. Due deliveries are leased (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a guarded update on
   SQLite and memory), so two workers never send the same delivery at once, and POSTed with
   httpx (``follow_redirects=False``). 2xx is ``delivered``; anything else is retried with
   exponential backoff from ``webhook_retry_delay`` until ``webhook_max_attempts``, then
   ``failed``. Every attempt's status code / error is kept on the row (``deliveries()``).

Requests follow Standard Webhooks: ``webhook-id`` (the delivery id, stable across retries, so
receivers can de-duplicate), ``webhook-timestamp`` (unix seconds) and ``webhook-signature``: one
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` per active secret, space-separated, so a
receiver keeps verifying while secrets rotate. Receivers check with :func:`verify_signature`.

Targets on loopback, private, link-local, unspecified, multicast or reserved addresses (also
IPv4-mapped IPv6 and decimal/hex/octal IPv4 spellings) are refused at registration and again at
send time after resolving DNS, unless ``allow_private`` (per endpoint, or the setting).
Secrets are returned once by ``register``/``rotate_secret`` and never appear in reprs, logs or
errors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets as secrets_module
import socket
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import httpx

from soniq.backends.stores import WebhookDelivery, WebhookEndpoint, WebhookStore
from soniq.errors import DatabaseError, UnsupportedOperationError, ValidationError
from soniq.ids import is_uuid, new_id
from soniq.serialization import utc_now

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Mapping

    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.runtime import EventDispatcher, JobEvent
    from soniq.settings import SoniqSettings

__all__ = ["EVENTS", "WebhookService", "Webhooks", "check_target", "sign", "verify_signature"]

logger = logging.getLogger("soniq.webhooks")

EVENTS = ("job.enqueued", "job.started", "job.done", "job.failed", "job.dead_letter",
          "job.cancelled")
STATUSES = ("pending", "delivered", "failed")
#: How long a worker holds a delivery while sending it (beyond the request timeout).
LEASE_MARGIN = 30.0
SECRET_PREFIX = "whsec_"


# -- signing ---------------------------------------------------------------------------------
def _key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except ValueError:
            pass
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    message = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes | str,
                     tolerance: float = 300, *, now: float | None = None) -> bool:
    """True when ``headers`` (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)
    carry a valid signature of ``body`` by ``secret`` and the timestamp is within ``tolerance``
    seconds of now. For receivers; header names are matched case-insensitively."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get("webhook-id"), lower.get("webhook-timestamp"),
                                 lower.get("webhook-signature"))
    if not msg_id or not stamp or not signatures:
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = sign(secret, msg_id, timestamp, raw)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split())


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets_module.token_bytes(32)).decode()


# -- SSRF ------------------------------------------------------------------------------------
def _parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host spells, including legacy decimal/hex/octal IPv4 forms; None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))  # 2130706433, 0x7f000001, 0177...
        except OSError:
            return None
    return None


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _split(url: str) -> tuple[str, str, int]:
    if not isinstance(url, str):
        raise ValidationError("a webhook url must be a string")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"webhook url is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError(f"webhook url must be http or https, got scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise ValidationError("webhook url has no host")
    return host, parts.scheme, port or (443 if parts.scheme == "https" else 80)


def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse a URL whose scheme is not http(s), or whose host is a non-public address (or
    ``localhost``) unless ``allow_private``. Names are resolved at send time
    (:func:`resolve_target`)."""
    host, _, _ = _split(url)
    if allow_private:
        return
    ip = _parse_ip(host)
    if ip is not None and not _is_public(ip):
        raise ValidationError(
            f"webhook target {host!r} is a private, loopback or link-local address ({ip}); pass "
            "allow_private=True (or set webhook_allow_private) to allow it")
    if ip is None and (host == "localhost" or host.endswith(".localhost")):
        raise ValidationError(f"webhook target {host!r} is loopback; pass allow_private=True")


async def resolve_target(url: str, *, allow_private: bool) -> None:
    """:func:`check_target`, then resolve the host and refuse when any address is not public."""
    check_target(url, allow_private=allow_private)
    if allow_private:
        return
    host, _, port = _split(url)
    if _parse_ip(host) is not None:
        return
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValidationError(f"webhook host {host!r} does not resolve: {exc}") from None
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not _is_public(ip):
            raise ValidationError(
                f"webhook host {host!r} resolves to non-public address {ip}; refused")


# -- the facade ------------------------------------------------------------------------------
def _store(backend: StorageBackend) -> WebhookStore:
    store = getattr(backend, "webhooks", None)
    if not isinstance(store, WebhookStore):
        raise UnsupportedOperationError(f"the {backend.name} backend does not store webhooks")
    return store


def _secrets(endpoint: WebhookEndpoint) -> list[dict[str, Any]]:
    value: list[dict[str, Any]] = json.loads(endpoint.secrets)
    return value


def _active_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    return [s["secret"] for s in _secrets(endpoint)
            if s.get("expires_at") is None or datetime.fromisoformat(s["expires_at"]) > now]


def _public(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {"id": endpoint.id, "url": endpoint.url,
            "events": None if endpoint.events is None else list(endpoint.events),
            "allow_private": endpoint.allow_private, "active": endpoint.active,
            "description": endpoint.description, "created_at": endpoint.created_at}


def _delivery(d: WebhookDelivery) -> dict[str, Any]:
    return {"id": d.id, "endpoint_id": d.endpoint_id, "event": d.event, "payload": d.payload,
            "status": d.status, "attempts": d.attempts, "next_attempt_at": d.next_attempt_at,
            "last_status_code": d.last_status_code, "last_error": d.last_error,
            "created_at": d.created_at, "delivered_at": d.delivered_at}


class Webhooks:
    """``app.webhooks``: manage endpoints and read deliveries. Each call initialises the app."""

    def __init__(self, backend: StorageBackend, *, ready: Callable[[], Awaitable[None]],
                 settings: SoniqSettings) -> None:
        self._backend = backend
        self._ready = ready
        self._settings = settings

    def __repr__(self) -> str:
        return f"<Webhooks backend={self._backend.name}>"

    async def _store(self) -> WebhookStore:
        store = _store(self._backend)
        await self._ready()
        return store

    async def register(self, url: str, *, events: builtins.list[str] | None = None,
                       secret: str | None = None, allow_private: bool = False,
                       description: str | None = None) -> dict[str, Any]:
        """Add an endpoint for ``events`` (None: all of :data:`EVENTS`). Returns the endpoint
        with its ``secret`` -- the only time the secret is shown."""
        allow = allow_private or self._settings.webhook_allow_private
        check_target(url, allow_private=allow)
        chosen: tuple[str, ...] | None = None
        if events is not None:
            if isinstance(events, str) or not events:
                raise ValidationError("events must be a non-empty list of event names, or None")
            unknown = [e for e in events if e not in EVENTS]
            if unknown:
                raise ValidationError(
                    f"unknown webhook events {unknown}; use any of {', '.join(EVENTS)}")
            chosen = tuple(dict.fromkeys(events))
        if secret is None:
            secret = new_secret()
        elif not isinstance(secret, str) or len(secret) < 16:
            raise ValidationError("a webhook secret must be a string of at least 16 characters")
        endpoint = WebhookEndpoint(
            id=new_id(), url=url, events=chosen,
            secrets=json.dumps([{"secret": secret, "expires_at": None}]),
            allow_private=allow_private, active=True, description=description,
            created_at=utc_now())
        await (await self._store()).add_endpoint(endpoint)
        return {**_public(endpoint), "secret": secret}

    async def list(self) -> builtins.list[dict[str, Any]]:
        """Every endpoint (without secrets), oldest first."""
        return [_public(e) for e in await (await self._store()).list_endpoints()]

    async def get(self, endpoint_id: str) -> dict[str, Any] | None:
        if not is_uuid(endpoint_id):
            return None
        endpoint = await (await self._store()).get_endpoint(endpoint_id)
        return None if endpoint is None else _public(endpoint)

    async def unregister(self, endpoint_id: str) -> bool:
        """Remove the endpoint and its deliveries; True when it existed."""
        if not is_uuid(endpoint_id):
            return False
        return await (await self._store()).delete_endpoint(endpoint_id)

    async def rotate_secret(self, endpoint_id: str, *, grace: float = 86_400,
                            secret: str | None = None) -> str | None:
        """Add a new secret (returned once); current ones keep signing for ``grace`` seconds,
        so receivers can switch over. None when there is no such endpoint."""
        if not is_uuid(endpoint_id):
            return None
        store = await self._store()
        endpoint = await store.get_endpoint(endpoint_id)
        if endpoint is None:
            return None
        now = utc_now()
        new = secret if secret is not None else new_secret()
        if len(new) < 16:
            raise ValidationError("a webhook secret must be a string of at least 16 characters")
        cutoff = (now + timedelta(seconds=grace)).isoformat()
        kept = [{"secret": s["secret"], "expires_at": min(s["expires_at"] or cutoff, cutoff)}
                for s in _secrets(endpoint)
                if s.get("expires_at") is None or datetime.fromisoformat(s["expires_at"]) > now]
        await store.set_secrets(endpoint_id, json.dumps([{"secret": new, "expires_at": None},
                                                         *kept]))
        return new

    async def deliveries(self, endpoint_id: str | None = None, status: str | None = None,
                         limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Delivery rows, newest first, with each one's attempts and last status/error."""
        if status is not None and status not in STATUSES:
            raise ValidationError(f"unknown delivery status {status!r}; use one of {STATUSES}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValidationError(f"limit must be an integer >= 1, got {limit!r}")
        if endpoint_id is not None and not is_uuid(endpoint_id):
            return []
        rows = await (await self._store()).list_deliveries(
            endpoint_id=endpoint_id, status=status, limit=limit)
        return [_delivery(d) for d in rows]


# -- the service -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Pending:
    endpoint_id: str
    event: str
    payload: str
    at: datetime


class WebhookService:
    """Turns job events into delivery rows and sends due deliveries (one per worker task group).

    ``run_once()`` is one tick: reload endpoints when stale, write the buffer, send due
    deliveries. Tests drive it directly.
    """

    name = "webhooks"

    def __init__(self, backend: StorageBackend, events: EventDispatcher,
                 settings: SoniqSettings, *, buffer_size: int = 10_000,
                 batch_size: int = 10) -> None:
        self._backend = backend
        self._events = events
        self._settings = settings
        self._buffer: deque[_Pending] = deque()
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._endpoints: list[WebhookEndpoint] = []
        self._loaded_at: float | None = None
        self._subscribed = False
        #: Events dropped because the buffer was full (since this service started).
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<WebhookService endpoints={len(self._endpoints)} buffered={len(self._buffer)}>"

    def _follow_events(self, wanted: bool) -> None:
        """Listen to job events only while endpoints exist: with none, a worker builds no events
        at all for webhooks (the runtime skips them when nobody listens)."""
        if wanted and not self._subscribed:
            self._events.subscribe(self._on_event)
        elif not wanted and self._subscribed:
            self._events.unsubscribe(self._on_event)
        self._subscribed = wanted

    def _on_event(self, event: JobEvent) -> None:
        if not self._endpoints:
            return
        name = f"job.{event.kind}"
        matching = [e for e in self._endpoints
                    if e.active and (e.events is None or name in e.events)]
        if not matching:
            return
        data: dict[str, Any] = {"job_id": event.job_id, "job_name": event.job_name,
                                "queue": event.queue, "attempt": event.attempt}
        if event.error is not None:
            data["error"] = event.error
        payload = json.dumps({"type": name, "timestamp": event.at.isoformat(), "data": data},
                             separators=(",", ":"))
        for endpoint in matching:
            if len(self._buffer) >= self._buffer_size:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning("webhook buffer full (%d); %d event(s) dropped so far",
                                   self._buffer_size, self.dropped)
                continue
            self._buffer.append(_Pending(endpoint.id, name, payload, event.at))

    async def reload(self) -> None:
        self._endpoints = await _store(self._backend).list_endpoints()
        self._loaded_at = time.monotonic()
        self._follow_events(bool(self._endpoints))

    async def flush(self) -> int:
        """Write buffered events as pending deliveries; how many."""
        if not self._buffer:
            return 0
        batch = list(self._buffer)
        self._buffer.clear()
        rows = [WebhookDelivery(
            id=new_id(), endpoint_id=p.endpoint_id, event=p.event, payload=p.payload,
            status="pending", attempts=0, next_attempt_at=p.at, last_status_code=None,
            last_error=None, created_at=p.at, delivered_at=None, lease_until=None)
            for p in batch]
        try:
            await _store(self._backend).add_deliveries(rows)
        except BaseException:
            self._buffer.extendleft(reversed(batch))  # written on the next tick
            raise
        return len(rows)

    async def run_once(self) -> int:
        """One tick; returns how many deliveries were attempted."""
        await self._record()
        return await self._deliver()

    async def _record(self) -> int:
        """Reload endpoints when stale and write the buffered events."""
        if (self._loaded_at is None
                or time.monotonic() - self._loaded_at >= self._settings.webhook_reload_interval):
            await self.reload()
        return await self.flush()

    async def _deliver(self) -> int:
        return await self.deliver_due() if self._endpoints else 0

    async def _every(self, step: Callable[[], Awaitable[int]]) -> None:
        while True:
            try:
                await step()
            except DatabaseError as exc:
                logger.warning("webhook service: %s; retrying in %.1fs", exc,
                               self._settings.error_retry_delay)
                await anyio.sleep(self._settings.error_retry_delay)
                continue
            await anyio.sleep(self._settings.webhook_poll_interval)

    async def deliver_due(self) -> int:
        store = _store(self._backend)
        now = utc_now()
        lease = now + timedelta(seconds=self._settings.webhook_timeout + LEASE_MARGIN)
        claimed = await store.claim(now, lease_until=lease, limit=self._batch_size)
        if not claimed:
            return 0
        endpoints = {e.id: e for e in await store.list_endpoints()}
        # The whole batch is sent at once, so one lease (timeout + margin) covers every send.
        async with httpx.AsyncClient(timeout=self._settings.webhook_timeout,
                                     follow_redirects=False, trust_env=False) as client, \
                anyio.create_task_group() as tg:
            for delivery in claimed:
                tg.start_soon(self._send, store, client, delivery,
                              endpoints.get(delivery.endpoint_id), lease)
        return len(claimed)

    async def _send(self, store: WebhookStore, client: httpx.AsyncClient,
                    delivery: WebhookDelivery, endpoint: WebhookEndpoint | None,
                    lease: datetime) -> None:
        attempts = delivery.attempts + 1
        code: int | None = None
        error: str | None = None
        if endpoint is None:
            return  # unregistered meanwhile; its deliveries went with it
        try:
            with anyio.fail_after(self._settings.webhook_timeout):
                await resolve_target(endpoint.url, allow_private=endpoint.allow_private
                                     or self._settings.webhook_allow_private)
            now = utc_now()
            stamp = int(now.timestamp())
            body = delivery.payload.encode()
            signature = " ".join(sign(s, delivery.id, stamp, body)
                                 for s in _active_secrets(endpoint, now))
            response = await client.post(endpoint.url, content=body, headers={
                "content-type": "application/json", "webhook-id": delivery.id,
                "webhook-timestamp": str(stamp), "webhook-signature": signature,
                "user-agent": "soniq-webhooks"})
            code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}" + (" (redirects are not followed)"
                                          if 300 <= code < 400 else "")
        except ValidationError as exc:
            error = str(exc)
        except TimeoutError:
            error = "resolving the webhook host timed out"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        now = utc_now()
        if error is None:
            status, next_at, delivered = "delivered", now, now
        elif attempts >= self._settings.webhook_max_attempts:
            status, next_at, delivered = "failed", now, None
        else:
            delay = min(self._settings.webhook_retry_delay * 2 ** (attempts - 1),
                        self._settings.webhook_max_retry_delay)
            status, next_at, delivered = "pending", now + timedelta(seconds=delay), None
        if error is not None:
            logger.info("webhook delivery %s to endpoint %s attempt %d: %s", delivery.id,
                        endpoint.id, attempts, error)
        await store.finish(delivery.id, lease_until=lease, status=status, attempts=attempts,
                           next_attempt_at=next_at, status_code=code, error=error,
                           delivered_at=delivered)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if getattr(self._backend, "webhooks", None) is None:
            task_status.started()
            return
        task_status.started()
        try:
            # Two loops: a receiver that never answers holds up sending for webhook_timeout, but
            # never the writing of new events (the bounded buffer would overflow and drop them).
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._every, self._record)
                tg.start_soon(self._every, self._deliver)
        finally:
            # Events of the last jobs this worker ran become rows before it goes (bounded).
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self.flush()
                except DatabaseError as exc:
                    logger.warning("webhook service: %d buffered event(s) lost on shutdown: %s",
                                   len(self._buffer), exc)
