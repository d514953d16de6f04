"""Webhook delivery: the :class:`WebhookService` every worker runs (the management API,
``app.webhooks``, is :mod:`soniq.features.webhooks`).

Delivery is an outbox:

1. On PostgreSQL the finish statement records each attempt's events itself (``job.started``
   and the outcome's event; the heartbeat records ``job.started`` earlier for a job still
   running; cancel and rescue theirs) in the backend's event log, in the transaction that
   records the outcome, while the webhook store reads that log
   (``WebhookStore.record_lifecycle``): no Python per event, and an event exists exactly when
   its change committed. When deliveries are claimed or listed, the store takes the log's rows
   into a log of its own, one row of arrays per statement and subscribed endpoint, and turns
   those into deliveries while the endpoint has fewer than a window (1 000) of pending ones: a
   receiver that never answers costs a window of rows.
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

httpx is imported when the service first sends (or prepares to), never by ``import soniq``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, get_args

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
    LazyCipher,
    Resolver,
    active_secrets,
    open_secrets,
    post_pinned,
    reseal,
    resolve_target,
    sign,
)
from soniq.features.workflows import WORKFLOW_EVENTS, workflow_event
from soniq.runtime.seams import EventKind
from soniq.serialization import utc_now

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

    import httpx
    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.runtime import EventDispatcher, JobEvent
    from soniq.settings import SoniqSettings

__all__ = ["EVENTS", "LEASE_MARGIN", "RECORD_INTERVAL", "WebhookService", "webhook_store"]

logger = logging.getLogger("soniq.webhooks")

EVENTS = ("job.enqueued", "job.started", "job.done", "job.failed", "job.dead_letter",
          "job.cancelled", *WORKFLOW_EVENTS)
#: Workflows this process announced last, and with which status (so the steps that end a
#: workflow together in this process announce it once).
_ANNOUNCED = 10_000
#: How long a worker holds a delivery beyond resolving (``webhook_timeout``) and sending
#: (``webhook_timeout``) it.
LEASE_MARGIN = 30.0


def webhook_store(backend: StorageBackend) -> WebhookStore:
    """The backend's webhook store; an error where the backend has none."""
    store = backend.webhooks
    if store is None:
        raise UnsupportedOperationError(f"the {backend.name} backend does not store webhooks")
    return store


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an httpx error; when it has no message (trio's TLS failures), the
    first message down its cause chain, so the row says why (e.g. certificate verify failed)."""
    reason, cause = str(exc), exc.__cause__ or exc.__context__
    while not reason and cause is not None:
        reason, cause = str(cause), cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {reason}"[:500]


# -- the service ------------------------------------------------------------------------------
#: JobEvent.kind -> webhook event name.
_NAMES: dict[EventKind, str] = {kind: f"job.{kind}" for kind in get_args(EventKind)}
#: Seconds between writes of the event buffer: short, so a busy worker writes small batches and
#: the buffer stays far below its bound.
RECORD_INTERVAL = 0.1


class WebhookService:
    """Turns job events into delivery rows, sends due deliveries and prunes finished ones (one
    per worker task group).

    ``tick()`` is one turn of the loop: reload endpoints when stale, write the buffer, send due
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
        #: Workflows a step of which ended here since the last announce (``workflow.*``).
        self._stepped: set[str] = set()
        self._announced: dict[str, str] = {}

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
        if self._wanted & set(WORKFLOW_EVENTS) and self._backend.workflows is not None:
            self._events.subscribe_steps(self._on_step)
        else:
            self._events.unsubscribe_steps(self._on_step)

    def _on_step(self, workflow_id: str) -> None:
        if len(self._stepped) < self._buffer_size:
            self._stepped.add(workflow_id)

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
        store = webhook_store(self._backend)
        self._endpoints = await store.list_endpoints()
        self._loaded_at = time.monotonic()
        self._follow(store)
        resealed = await reseal(store, self._endpoints, self._cipher())
        if resealed:
            logger.info("re-encrypted the secrets of %d webhook endpoint(s) with the newest key",
                        resealed)

    async def announce(self) -> int:
        """Write the event of each workflow a step of which ended here since the last call and
        that is now final (read after the step's outcome was stored: of the steps that end a
        workflow concurrently, the last stored sees it final); how many deliveries."""
        store = self._backend.workflows
        if not self._stepped or store is None:
            return 0
        stepped, self._stepped = self._stepped, set()
        events = []
        try:
            for workflow_id in sorted(stepped):
                found = await store.get(workflow_id)
                event = None if found is None else workflow_event(found)
                if (event is None or event.event not in self._wanted
                        or self._announced.get(workflow_id) == event.event):
                    continue
                self._announced.pop(workflow_id, None)
                self._announced[workflow_id] = event.event
                if len(self._announced) > _ANNOUNCED:
                    del self._announced[next(iter(self._announced))]
                events.append(event)
            return await webhook_store(self._backend).add_messages(events) if events else 0
        except BaseException:
            self._stepped |= stepped  # announced on the next tick
            for event in events:
                self._announced.pop(event.data["workflow_id"], None)
            raise

    async def flush(self) -> int:
        """Write buffered events as pending deliveries; how many deliveries (on PostgreSQL,
        how many the recorded events will become)."""
        if not self._buffer:
            return 0
        batch = list(self._buffer)
        self._buffer.clear()
        try:
            return await webhook_store(self._backend).add_events(batch)
        except BaseException:
            self._buffer.extendleft(reversed(batch))  # written on the next tick
            raise

    async def tick(self) -> int:
        """One tick; returns how many deliveries were attempted."""
        await self._record()
        return await self._deliver()

    async def _record(self) -> int:
        """Reload endpoints when stale and write the buffered events."""
        if (self._loaded_at is None
                or time.monotonic() - self._loaded_at >= self._settings.webhook_reload_interval):
            await self.reload()
        await self.announce()
        return await self.flush()

    async def _deliver(self) -> int:
        return await self.deliver_due() if self._endpoints else 0

    async def prune(self, *, now: datetime | None = None) -> int:
        """Delete delivered and failed deliveries that finished more than
        ``webhook_delivery_retention`` seconds before ``now``; how many."""
        cutoff = (now or utc_now()) - timedelta(seconds=self._settings.webhook_delivery_retention)
        return await webhook_store(self._backend).prune_deliveries(before=cutoff)

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
            import httpx  # only a worker that sends needs it

            # httpx's default (certifi's CAs), built once rather than per client.
            self._ssl_context = httpx.create_ssl_context(trust_env=False)
        return self._ssl_context

    def _prepare_http(self) -> None:
        """Build what the first send would otherwise build on the event loop: the certificate
        store, and the transport module httpx imports for its first client (~0.15 s here)."""
        import httpx  # only a worker that sends needs it

        httpx.AsyncHTTPTransport(verify=self._ssl())

    def _client(self) -> httpx.AsyncClient:
        """A client for one send: a connection is never reused for another endpoint's request
        (connections are keyed by the pinned address, which several hosts may share)."""
        import httpx  # only a worker that sends needs it

        return httpx.AsyncClient(timeout=self._settings.webhook_timeout, follow_redirects=False,
                                 trust_env=False, verify=self._ssl())

    async def deliver_due(self) -> int:
        store = webhook_store(self._backend)
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
        import httpx  # only a worker that sends needs it

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
        if self._backend.webhooks is None:
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
                    await self.announce()
                    await self.flush()
                except DatabaseError as exc:
                    logger.warning("webhook service: %d buffered event(s) lost on shutdown: %s",
                                   len(self._buffer), exc)
