"""The webhook store protocol and its shapes (re-exported by :mod:`soniq.backends.stores`):
endpoints, deliveries (the outbox), the events and messages a store fans out to endpoints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from soniq.ids import new_id

if TYPE_CHECKING:
    import builtins
    from collections.abc import Iterable, Sequence
    from datetime import datetime

__all__ = ["WebhookDelivery", "WebhookEndpoint", "WebhookEvent", "WebhookMessage", "WebhookStore",
           "fan_out", "webhook_payload"]


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A registered webhook target. ``events`` is None for every event; ``secrets`` is JSON text,
    stored as the feature hands it over: ``[{"secret": ..., "expires_at": iso or null}]``, or
    that list encrypted (``{"$enc": token}``) when keys are configured. Never shown in reprs."""

    id: str
    url: str
    events: tuple[str, ...] | None
    secrets: str = field(repr=False)
    allow_private: bool
    active: bool
    description: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event to one endpoint (the outbox row). ``status``: pending, delivered or failed;
    ``lease_until`` is set while a worker is sending it. For a delivered or failed row,
    ``next_attempt_at`` is when it finished (retention is measured from it)."""

    id: str
    endpoint_id: str
    event: str
    payload: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    lease_until: datetime | None


class WebhookEvent(NamedTuple):
    """A job event on its way to the outbox (what :meth:`WebhookStore.add_events` takes): a plain
    tuple, so a batch transposes into columns with ``zip(*events)``."""

    event: str  # "job.done", ...
    job_id: str
    job_name: str
    queue: str
    attempt: int
    error: str | None
    at: datetime


class WebhookMessage(NamedTuple):
    """An event not about one job (``workflow.done``, ...) for :meth:`WebhookStore.add_messages`:
    its name, its payload's ``data`` (a JSON object) and when it happened."""

    event: str
    data: dict[str, Any]
    at: datetime


def webhook_payload(e: WebhookEvent | WebhookMessage) -> str:
    """The request body of ``e``: compact JSON, non-ASCII kept as is, the time as UTC with
    microseconds. PostgreSQL builds the same text for job events in SQL
    (``postgres/webhooks.py``)."""
    data = e.data if isinstance(e, WebhookMessage) else {
        "job_id": e.job_id, "job_name": e.job_name, "queue": e.queue, "attempt": e.attempt}
    if isinstance(e, WebhookEvent) and e.error is not None:
        data["error"] = e.error
    return json.dumps({"type": e.event, "timestamp": f"{e.at:%Y-%m-%dT%H:%M:%S.%f}+00:00",
                       "data": data}, separators=(",", ":"), ensure_ascii=False)


def fan_out(events: Sequence[WebhookEvent | WebhookMessage],
            endpoints: Iterable[WebhookEndpoint]) -> builtins.list[WebhookDelivery]:
    """One pending delivery per event per active endpoint subscribed to it (the stores that
    cannot do this in SQL)."""
    active = [e for e in endpoints if e.active]
    return [WebhookDelivery(
        id=new_id(), endpoint_id=endpoint.id, event=e.event, payload=webhook_payload(e),
        status="pending", attempts=0, next_attempt_at=e.at, last_status_code=None,
        last_error=None, created_at=e.at, delivered_at=None, lease_until=None)
        for e in events for endpoint in active
        if endpoint.events is None or e.event in endpoint.events]


@runtime_checkable
class WebhookStore(Protocol):
    """Webhook endpoints (``soniq_webhook_endpoints``) and their delivery outbox
    (``soniq_webhook_deliveries``, deleted with the endpoint).

    :meth:`claim` is the one operation that must be exclusive: a due, unleased pending delivery
    is leased to one caller only (``FOR UPDATE SKIP LOCKED`` / a guarded update), and
    :meth:`finish` is fenced by that lease.
    """

    async def add_endpoint(self, endpoint: WebhookEndpoint) -> None: ...

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None: ...

    async def list_endpoints(self) -> builtins.list[WebhookEndpoint]:
        """Every endpoint, oldest first."""
        ...

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        """Remove the endpoint and its deliveries; True when it existed."""
        ...

    async def set_secrets(self, endpoint_id: str, secrets: str, *,
                          expected: str | None = None) -> bool:
        """Replace the endpoint's secrets; True when written. With ``expected``, only while the
        stored value is still ``expected`` (compare-and-set, so concurrent rotations and
        re-encryptions never undo each other)."""
        ...

    def record_lifecycle(self, events: frozenset[str]) -> frozenset[str]:
        """Have the backend write the deliveries of those of ``events`` it can itself, for the
        jobs its workers run, in the statements that change those jobs (PostgreSQL:
        ``job.started`` and the outcome's event in the finish); the rest it stops writing that
        way. Returns the events it writes, which the caller must then not pass to
        :meth:`add_events`; empty when the backend cannot (memory, SQLite)."""
        ...

    async def add_events(self, events: Sequence[WebhookEvent]) -> int:
        """Write one pending delivery per event per active endpoint subscribed to it, as the
        endpoints are stored now; how many. The payload is :func:`webhook_payload`. PostgreSQL
        records the events in its event log instead and writes those deliveries when
        deliveries are claimed or listed."""
        ...

    async def add_messages(self, messages: Sequence[WebhookMessage]) -> int:
        """As :meth:`add_events` for messages, but every backend writes the deliveries
        directly (they are rare); how many."""
        ...

    async def claim(self, now: datetime, *, lease_until: datetime,
                    limit: int) -> builtins.list[WebhookDelivery]:
        """Lease up to ``limit`` pending deliveries due at ``now`` whose lease is unset or over,
        earliest first."""
        ...

    async def finish(self, delivery_id: str, *, lease_until: datetime, status: str,
                     attempts: int, next_attempt_at: datetime, status_code: int | None,
                     error: str | None, delivered_at: datetime | None) -> bool:
        """Record an attempt and clear the lease, if the lease is still ``lease_until``."""
        ...

    async def list_deliveries(self, *, endpoint_id: str | None, status: str | None,
                              limit: int) -> builtins.list[WebhookDelivery]:
        """Deliveries, newest first."""
        ...

    async def prune_deliveries(self, *, before: datetime) -> int:
        """Delete delivered and failed deliveries whose ``next_attempt_at`` (when they finished)
        is before ``before``, in batches; pending ones are kept. How many were deleted."""
        ...
