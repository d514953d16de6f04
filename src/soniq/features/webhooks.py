"""Webhooks: ``app.webhooks`` (register, list, get, unregister, rotate_secret, deliveries) and the
:class:`WebhookService` every worker runs.

Endpoints live in storage (:class:`~soniq.backends.stores.WebhookStore`, ``backend.webhooks``), so
an endpoint registered by any process is used by every worker sharing the database: each worker's
service reloads the endpoint list every ``webhook_reload_interval`` seconds (one small query; with
no endpoints nothing else happens).

Delivery is an outbox:

1. On PostgreSQL the finish statement records each attempt's events itself (``job.started``
   and the outcome's event; the heartbeat records ``job.started`` earlier for a job still
   running), in the transaction that records the outcome: no Python per event, and an event
   exists exactly when its change committed (``WebhookStore.record_lifecycle``). PostgreSQL
   keeps events in a log, one row of arrays per statement and endpoint, and turns them into
   deliveries when deliveries are claimed or listed, while the endpoint has fewer than a
   window (1 000) of pending ones: a receiver that never answers costs a window of rows.
2. The rest (``job.enqueued``; every event on SQLite and memory) come from ``app.events``: the
   service subscribes to just those kinds while endpoints want them (otherwise the runtime
   builds no events for it) and appends each, as a small tuple, to a bounded in-memory buffer
   -- the job path never waits on the database or the network, and builds no JSON. A full
   buffer (``buffer_size`` events) drops the event, counts it and logs a warning. Every
   ``RECORD_INTERVAL`` (0.1 s) the buffer is written in one batch, in a loop of its own: a
   receiver that hangs delays sending, never the writing. The store fans each event out to
   the endpoints subscribed to it *as stored at that moment* (in SQL on PostgreSQL, where the
   delivery id is a digest of the event and endpoint, so a batch written twice -- a retry after
   an unanswered commit -- is delivered once). Events still in the buffer when a worker dies are
   lost; a worker that stops writes them first (bounded).
3. Due deliveries are leased (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a guarded update on
   SQLite and memory), so two workers never send the same delivery at once, and POSTed with
   httpx (``follow_redirects=False``). 2xx is ``delivered``; anything else is retried with
   exponential backoff from ``webhook_retry_delay`` until ``webhook_max_attempts``, then
   ``failed``. Every attempt's status code / error is kept on the row (``deliveries()``).
4. Delivered and failed rows are deleted ``webhook_delivery_retention`` seconds after they
   finished, in a third loop: one worker per ``cleanup_interval`` (``claim_maintenance``); so
   are PostgreSQL log rows an endpoint has not taken in that time (logged as a warning).

Requests follow Standard Webhooks: ``webhook-id`` (the delivery id, stable across retries, so
receivers can de-duplicate), ``webhook-timestamp`` (unix seconds) and ``webhook-signature``: one
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` per active secret, space-separated, so a
receiver keeps verifying while secrets rotate. Receivers check with :func:`verify_signature`.

Targets on loopback, private, link-local, unspecified, multicast or reserved addresses (also
IPv4-mapped IPv6 and decimal/hex/octal IPv4 spellings) are refused at registration, unless
``allow_private`` (per endpoint, or the setting). A name is resolved once per attempt, every
address it resolves to is checked, and the request connects to a checked address -- never to a
second resolution, so DNS rebinding cannot reach an internal address
(:mod:`soniq.features.webhook_security`).

Secrets are returned once by ``register``/``rotate_secret`` and never appear in reprs, logs or
errors. With ``secret_keys`` configured they are stored encrypted (Fernet, newest key); rows
written before keys were configured, or under an older key, are re-encrypted by the next worker
that reloads the endpoint list. Without keys they are stored in plaintext (they are needed to sign).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, get_args

import anyio
import anyio.to_thread

from soniq.backends.stores import WebhookDelivery, WebhookEndpoint, WebhookEvent, WebhookStore
from soniq.errors import (
    ConfigurationError,
    DatabaseError,
    DecryptionError,
    SoniqError,
    UnsupportedOperationError,
    ValidationError,
)
from soniq.features.webhook_security import (
    SECRET_PREFIX,
    LazyCipher,
    Resolver,
    active_secrets,
    check_target,
    new_secret,
    open_secrets,
    post_pinned,
    reseal,
    resolve_target,
    seal_secrets,
    sign,
    verify_signature,
)
from soniq.ids import is_uuid, new_id
from soniq.runtime.seams import EventKind
from soniq.serialization import utc_now

if TYPE_CHECKING:
    import builtins
    import ssl
    from collections.abc import Awaitable, Callable

    import httpx
    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.runtime import EventDispatcher, JobEvent
    from soniq.settings import SoniqSettings

__all__ = ["EVENTS", "SECRET_PREFIX", "Resolver", "WebhookService", "Webhooks", "check_target",
           "resolve_target", "sign", "verify_signature"]

logger = logging.getLogger("soniq.webhooks")

EVENTS = ("job.enqueued", "job.started", "job.done", "job.failed", "job.dead_letter",
          "job.cancelled")
STATUSES = ("pending", "delivered", "failed")
#: How long a worker holds a delivery beyond resolving (``webhook_timeout``) and sending
#: (``webhook_timeout``) it.
LEASE_MARGIN = 30.0
#: Compare-and-set attempts of ``rotate_secret`` when another writer changes the same endpoint.
_ROTATE_ATTEMPTS = 5


# -- the facade ------------------------------------------------------------------------------
def _store(backend: StorageBackend) -> WebhookStore:
    store = getattr(backend, "webhooks", None)
    if not isinstance(store, WebhookStore):
        raise UnsupportedOperationError(f"the {backend.name} backend does not store webhooks")
    return store


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
        self._cipher = LazyCipher(settings)

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
            secrets=seal_secrets([{"secret": secret, "expires_at": None}], self._cipher()),
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
        so receivers can switch over. None when there is no such endpoint.

        Raises:
            ConfigurationError: the stored secrets are encrypted and no ``secret_keys`` are set.
            DecryptionError: they are encrypted with a key that is no longer configured.
        """
        if not is_uuid(endpoint_id):
            return None
        new = secret if secret is not None else new_secret()
        if not isinstance(new, str) or len(new) < 16:
            raise ValidationError("a webhook secret must be a string of at least 16 characters")
        store = await self._store()
        cipher = self._cipher()
        for _ in range(_ROTATE_ATTEMPTS):
            endpoint = await store.get_endpoint(endpoint_id)
            if endpoint is None:
                return None
            now = utc_now()
            cutoff = (now + timedelta(seconds=grace)).isoformat()
            kept = [{"secret": s["secret"], "expires_at": min(s["expires_at"] or cutoff, cutoff)}
                    for s in open_secrets(endpoint.secrets, cipher)
                    if s.get("expires_at") is None
                    or datetime.fromisoformat(s["expires_at"]) > now]
            sealed = seal_secrets([{"secret": new, "expires_at": None}, *kept], cipher)
            if await store.set_secrets(endpoint_id, sealed, expected=endpoint.secrets):
                return new
        raise DatabaseError(f"could not rotate the secret of webhook endpoint {endpoint_id}: "
                            "its secrets kept changing concurrently; try again")

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


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an httpx error; when it has no message (trio's TLS failures), the
    first message down its cause chain, so the row says why (e.g. certificate verify failed)."""
    reason, cause = str(exc), exc.__cause__ or exc.__context__
    while not reason and cause is not None:
        reason, cause = str(cause), cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {reason}"[:500]


# -- the service -----------------------------------------------------------------------------
#: JobEvent.kind -> webhook event name.
_NAMES: dict[EventKind, str] = {kind: f"job.{kind}" for kind in get_args(EventKind)}
#: Seconds between writes of the event buffer: short, so a busy worker writes small batches and
#: the buffer stays far below its bound.
RECORD_INTERVAL = 0.1


class WebhookService:
    """Turns job events into delivery rows, sends due deliveries and prunes finished ones (one
    per worker task group).

    ``run_once()`` is one tick: reload endpoints when stale, write the buffer, send due
    deliveries; ``prune(now=...)`` is the retention step. Tests drive them directly. ``resolver``
    replaces the system DNS resolver (:data:`~soniq.features.webhook_security.Resolver`) and
    ``ssl_context`` the default certificate verification (a private CA, say).
    """

    name = "webhooks"

    def __init__(self, backend: StorageBackend, events: EventDispatcher,
                 settings: SoniqSettings, *, buffer_size: int = 100_000,
                 batch_size: int = 10, resolver: Resolver | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._backend = backend
        self._events = events
        self._settings = settings
        self._buffer: deque[WebhookEvent] = deque()
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._resolver = resolver
        self._ssl_context = ssl_context
        self._cipher = LazyCipher(settings)
        self._endpoints: list[WebhookEndpoint] = []
        #: The event names some active endpoint subscribes to that this service records (the
        #: rest of them the store writes itself: ``record_lifecycle``).
        self._wanted: frozenset[str] = frozenset()
        self._loaded_at: float | None = None
        #: Events dropped because the buffer was full (since this service started).
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<WebhookService endpoints={len(self._endpoints)} buffered={len(self._buffer)}>"

    def _follow(self, store: WebhookStore) -> None:
        """Have the store write what it can itself, and listen to job events only for the rest:
        with no endpoint (or the store writing every event wanted), a worker builds no events
        at all for webhooks (the runtime skips kinds nobody listens to)."""
        wanted = {name for e in self._endpoints if e.active
                  for name in (EVENTS if e.events is None else e.events)}
        self._wanted = frozenset(wanted - store.record_lifecycle(frozenset(wanted)))
        if self._wanted:
            self._events.subscribe(self._on_event, kinds=[
                kind for kind, name in _NAMES.items() if name in self._wanted])
        else:
            self._events.unsubscribe(self._on_event)

    def _on_event(self, event: JobEvent) -> None:
        # The job's path: no JSON, no per-endpoint work (the store fans out when it writes).
        name = _NAMES[event.kind]
        if len(self._buffer) >= self._buffer_size:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("webhook buffer full (%d); %d event(s) dropped so far",
                               self._buffer_size, self.dropped)
            return
        self._buffer.append(WebhookEvent(name, event.job_id, event.job_name, event.queue,
                                         event.attempt, event.error, event.at))

    async def reload(self) -> None:
        """Read the endpoint list; with keys configured, re-encrypt secrets found in plaintext or
        under an older key (compare-and-set: one worker's write wins, the rest are no-ops)."""
        store = _store(self._backend)
        self._endpoints = await store.list_endpoints()
        self._loaded_at = time.monotonic()
        self._follow(store)
        resealed = await reseal(store, self._endpoints, self._cipher())
        if resealed:
            logger.info("re-encrypted the secrets of %d webhook endpoint(s) with the newest key",
                        resealed)

    async def flush(self) -> int:
        """Write buffered events as pending deliveries; how many deliveries (on PostgreSQL,
        how many the recorded events will become)."""
        if not self._buffer:
            return 0
        batch = list(self._buffer)
        self._buffer.clear()
        try:
            return await _store(self._backend).add_events(batch)
        except BaseException:
            self._buffer.extendleft(reversed(batch))  # written on the next tick
            raise

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

    async def prune(self, *, now: datetime | None = None) -> int:
        """Delete delivered and failed deliveries that finished more than
        ``webhook_delivery_retention`` seconds before ``now``; how many."""
        cutoff = (now or utc_now()) - timedelta(seconds=self._settings.webhook_delivery_retention)
        return await _store(self._backend).prune_deliveries(before=cutoff)

    async def prune_due(self, *, now: datetime | None = None) -> int | None:
        """:meth:`prune` if this worker leads this round (one worker per ``cleanup_interval``
        across all that share the database); None when it does not, or no endpoint exists
        (deliveries go with their endpoint, so there is nothing to prune)."""
        if not self._endpoints or not await self._backend.claim_maintenance(
                "webhook_prune", self._settings.cleanup_interval, now=now):
            return None
        pruned = await self.prune(now=now)
        if pruned:
            logger.debug("pruned %d finished webhook delivery row(s)", pruned)
        return pruned

    async def _every(self, step: Callable[[], Awaitable[object]], interval: float) -> None:
        while True:
            try:
                await step()
            except DatabaseError as exc:
                logger.warning("webhook service: %s; retrying in %.1fs", exc,
                               self._settings.error_retry_delay)
                await anyio.sleep(self._settings.error_retry_delay)
                continue
            await anyio.sleep(interval)

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            import httpx  # loads only in a worker that has webhook endpoints to send to

            # httpx's default (certifi's CAs), built once rather than per client.
            self._ssl_context = httpx.create_ssl_context(trust_env=False)
        return self._ssl_context

    def _prepare_http(self) -> None:
        """Build what the first send would otherwise build on the event loop: the certificate
        store, and the transport module httpx imports for its first client (~0.15 s here)."""
        import httpx

        httpx.AsyncHTTPTransport(verify=self._ssl())

    def _client(self) -> httpx.AsyncClient:
        """A client for one send: a connection is never reused for another endpoint's request
        (connections are keyed by the pinned address, which several hosts may share)."""
        import httpx

        return httpx.AsyncClient(timeout=self._settings.webhook_timeout, follow_redirects=False,
                                 trust_env=False, verify=self._ssl())

    async def deliver_due(self) -> int:
        store = _store(self._backend)
        now = utc_now()
        timeout = self._settings.webhook_timeout
        lease = now + timedelta(seconds=2 * timeout + LEASE_MARGIN)
        claimed = await store.claim(now, lease_until=lease, limit=self._batch_size)
        if not claimed:
            return 0
        endpoints = {e.id: e for e in await store.list_endpoints()}
        # The whole batch is sent at once, so one lease covers every send: resolving and sending
        # are each bounded by webhook_timeout.
        async with anyio.create_task_group() as tg:
            for delivery in claimed:
                tg.start_soon(self._send, store, delivery, endpoints.get(delivery.endpoint_id),
                              lease)
        return len(claimed)

    async def _attempt(self, delivery: WebhookDelivery,
                       endpoint: WebhookEndpoint) -> tuple[int | None, str | None]:
        """One POST: (status code, error or None). Every failure is an error string here."""
        import httpx

        timeout = self._settings.webhook_timeout
        try:
            secrets = active_secrets(open_secrets(endpoint.secrets, self._cipher()), utc_now())
            with anyio.fail_after(timeout):
                addresses = await resolve_target(
                    endpoint.url, allow_private=endpoint.allow_private
                    or self._settings.webhook_allow_private, resolver=self._resolver)
        except (ValidationError, ConfigurationError, DecryptionError) as exc:
            return None, str(exc)
        except TimeoutError:
            return None, f"resolving the webhook host timed out after {timeout:g}s"
        stamp = int(utc_now().timestamp())
        body = delivery.payload.encode()
        headers = {"content-type": "application/json", "webhook-id": delivery.id,
                   "webhook-timestamp": str(stamp),
                   "webhook-signature": " ".join(sign(s, delivery.id, stamp, body)
                                                 for s in secrets),
                   "user-agent": "soniq-webhooks"}
        try:
            with anyio.fail_after(timeout):
                async with self._client() as client:
                    response = await post_pinned(client, endpoint.url, addresses, content=body,
                                                 headers=headers)
        except TimeoutError:
            return None, f"the webhook request timed out after {timeout:g}s"
        except httpx.HTTPError as exc:
            return None, _describe(exc)
        except SoniqError as exc:
            return None, str(exc)
        code = response.status_code
        if 200 <= code < 300:
            return code, None
        return code, f"HTTP {code}" + (" (redirects are not followed)"
                                       if 300 <= code < 400 else "")

    async def _send(self, store: WebhookStore, delivery: WebhookDelivery,
                    endpoint: WebhookEndpoint | None, lease: datetime) -> None:
        if endpoint is None:
            # Unregistered after this row was written (the insert and the unregister raced):
            # nothing to send to, so the row is finished and left to retention.
            now = utc_now()
            await store.finish(delivery.id, lease_until=lease, status="failed",
                               attempts=delivery.attempts, next_attempt_at=now, status_code=None,
                               error="the webhook endpoint was unregistered", delivered_at=None)
            return
        attempts = delivery.attempts + 1
        code, error = await self._attempt(delivery, endpoint)
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
        # A finished row's next_attempt_at is when it finished: retention counts from it.
        await store.finish(delivery.id, lease_until=lease, status=status, attempts=attempts,
                           next_attempt_at=next_at, status_code=code, error=error,
                           delivered_at=delivered)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if getattr(self._backend, "webhooks", None) is None:
            task_status.started()
            return
        # Endpoints are known before the worker claims its first job, so its first jobs' events
        # are recorded too; a database that does not answer is retried by the loop below.
        with anyio.move_on_after(self._settings.webhook_timeout):
            try:
                await self.reload()
            except DatabaseError as exc:
                logger.warning("webhook service: %s; retrying in the background", exc)
            if self._endpoints:  # off the event loop, before any job runs on it
                await anyio.to_thread.run_sync(self._prepare_http)
        task_status.started()
        poll = self._settings.webhook_poll_interval
        try:
            # Separate loops: a receiver that never answers holds up sending for webhook_timeout,
            # but never the writing of new events (the bounded buffer would overflow and drop
            # them), and a long prune holds up neither.
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._every, self._record, min(poll, RECORD_INTERVAL))
                tg.start_soon(self._every, self._deliver, poll)
                tg.start_soon(self._every, self.prune_due, self._settings.cleanup_interval)
        finally:
            # Events of the last jobs this worker ran become rows before it goes (bounded).
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self.flush()
                except DatabaseError as exc:
                    logger.warning("webhook service: %d buffered event(s) lost on shutdown: %s",
                                   len(self._buffer), exc)
