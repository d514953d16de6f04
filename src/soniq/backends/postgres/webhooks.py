"""The webhook store on PostgreSQL (:class:`~soniq.backends.stores.WebhookStore`): its SQL and
the calls that run it.

The claim is one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)``: concurrent workers
skip each other's rows, and the lease it writes fences :meth:`PostgresWebhookStore.finish`.
Every driver call goes through :func:`soniq.backends._bridge.call` and driver errors through the
backend's translator.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.stores import WebhookDelivery, WebhookEndpoint, WebhookEvent

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from datetime import datetime

    from soniq.backends.postgres.errors import Translator

__all__ = ["LIFECYCLE_EVENTS", "PostgresWebhookStore", "fan_out"]

_ENDPOINT = ("id::text AS id, url, events, secrets::text AS secrets, allow_private, active, "
             "description, created_at")
_DELIVERY = ("d.id::text AS id, d.endpoint_id::text AS endpoint_id, d.event, "
             "d.payload, d.status, d.attempts, d.next_attempt_at, "
             "d.last_status_code, d.last_error, d.created_at, d.delivered_at, d.lease_until")

INSERT_ENDPOINT = """
INSERT INTO soniq_webhook_endpoints (id, url, events, secrets, allow_private, active, description,
                                     created_at)
VALUES ($1::uuid, $2::text, $3::text[], $4::jsonb, $5::boolean, $6::boolean, $7::text,
        $8::timestamptz)
"""

#: The events the finish and heartbeat statements write deliveries for themselves, while
#: :meth:`PostgresWebhookStore.record_lifecycle` is on (sql.py, ``*_HOOKED``).
LIFECYCLE_EVENTS = frozenset({"job.started", "job.done", "job.failed", "job.dead_letter",
                              "job.cancelled"})

_FAN_OUT = """
INSERT INTO soniq_webhook_deliveries (id, endpoint_id, event, payload, status, attempts,
                                      next_attempt_at, created_at)
SELECT (lpad(to_hex(r.us / 1000), 12, '0') || '7' || lpad(to_hex(r.us % 1000), 3, '0') || '8'
        || left(md5(e.id::text || r.job_id || r.event || r.attempt::text || r.us::text), 15)
       )::uuid, e.id,
       r.event,
       '{"type":' || to_json(r.event)::text
       || ',"timestamp":"' || to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
       || '+00:00","data":{"job_id":' || to_json(r.job_id)::text
       || ',"job_name":' || to_json(r.job_name)::text || ',"queue":' || to_json(r.queue)::text
       || ',"attempt":' || r.attempt::text
       || coalesce(',"error":' || to_json(r.error)::text, '') || '}}',
       'pending', 0, r.at, r.at
FROM (SELECT *, (extract(epoch FROM at) * 1000000)::bigint AS us FROM (SOURCE) AS source) AS r
JOIN soniq_webhook_endpoints AS e
  ON r.event IS NOT NULL AND e.active AND (e.events IS NULL OR r.event = ANY (e.events))
ON CONFLICT (id) DO NOTHING"""


def fan_out(source: str) -> str:
    """An INSERT writing one pending delivery per row of ``source`` per active endpoint
    subscribed to its event, with the payload built exactly as ``webhook_payload`` builds it.
    ``source`` is a query with the columns of :class:`WebhookEvent` (``event`` NULL: no
    delivery). The id is a UUIDv7 of the event's time whose random part is a digest of
    (endpoint, job, event, attempt, time): time-ordered, so inserts stay at the right edge of
    the primary key, and the same for the same event, so a batch written twice (a retry after
    an unanswered commit, or a heartbeat and a finish both writing ``job.started``) adds
    nothing."""
    return _FAN_OUT.replace("SOURCE", source)


#: $1..$7 are the columns of :class:`WebhookEvent` as JSON arrays (``at`` as unix seconds): a
#: busy worker writes two events a job, and encoding seven typed arrays cost it more than the
#: job did (JSON is encoded in C).
INSERT_EVENTS = fan_out("""
    SELECT event, job_id, job_name, queue, attempt::integer, error, to_timestamp(at::float8) AS at
    FROM unnest(ARRAY(SELECT json_array_elements_text($1::json)),
                ARRAY(SELECT json_array_elements_text($2::json)),
                ARRAY(SELECT json_array_elements_text($3::json)),
                ARRAY(SELECT json_array_elements_text($4::json)),
                ARRAY(SELECT json_array_elements_text($5::json)),
                ARRAY(SELECT json_array_elements_text($6::json)),
                ARRAY(SELECT json_array_elements_text($7::json)))
         AS u(event, job_id, job_name, queue, attempt, error, at)""")

#: The endpoint and its deliveries, in one statement.
DELETE_ENDPOINT = """
WITH deliveries AS (DELETE FROM soniq_webhook_deliveries WHERE endpoint_id = $1::uuid)
DELETE FROM soniq_webhook_endpoints WHERE id = $1::uuid RETURNING id
"""

#: $1 lease_until, $2 now, $3 limit.
CLAIM = f"""
UPDATE soniq_webhook_deliveries AS d SET lease_until = $1::timestamptz
FROM (SELECT id FROM soniq_webhook_deliveries
      WHERE status = 'pending' AND next_attempt_at <= $2::timestamptz
        AND (lease_until IS NULL OR lease_until <= $2::timestamptz)
      ORDER BY next_attempt_at, id LIMIT $3::integer
      FOR UPDATE SKIP LOCKED) AS due
WHERE d.id = due.id
RETURNING {_DELIVERY}
"""

FINISH = """
UPDATE soniq_webhook_deliveries SET status = $3::text, attempts = $4::integer,
       next_attempt_at = $5::timestamptz, last_status_code = $6::integer, last_error = $7::text,
       delivered_at = $8::timestamptz, lease_until = NULL
WHERE id = $1::uuid AND lease_until = $2::timestamptz
RETURNING id
"""

#: $1 before, $2 batch size. The partial index soniq_webhook_deliveries_finished_idx serves it.
PRUNE_DELIVERIES = """
DELETE FROM soniq_webhook_deliveries
WHERE id = ANY (ARRAY(
    SELECT id FROM soniq_webhook_deliveries
    WHERE status <> 'pending' AND next_attempt_at < $1::timestamptz
    LIMIT $2::integer
    FOR UPDATE SKIP LOCKED))
"""
#: Rows deleted per prune statement: short transactions, few row locks held at once.
PRUNE_BATCH = 1000

SET_SECRETS = """
UPDATE soniq_webhook_endpoints SET secrets = $2::jsonb
WHERE id = $1::uuid AND ($3::jsonb IS NULL OR secrets = $3::jsonb)
RETURNING id
"""

LIST_DELIVERIES = f"""
SELECT {_DELIVERY} FROM soniq_webhook_deliveries AS d
WHERE ($1::uuid IS NULL OR d.endpoint_id = $1::uuid) AND ($2::text IS NULL OR d.status = $2::text)
ORDER BY d.created_at DESC, d.id DESC LIMIT $3::integer
"""


def _endpoint(row: Mapping[str, Any]) -> WebhookEndpoint:
    events = row["events"]
    return WebhookEndpoint(
        id=row["id"], url=row["url"], events=None if events is None else tuple(events),
        secrets=row["secrets"], allow_private=row["allow_private"], active=row["active"],
        description=row["description"], created_at=row["created_at"])


def _delivery(row: Mapping[str, Any]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row["id"], endpoint_id=row["endpoint_id"], event=row["event"], payload=row["payload"],
        status=row["status"], attempts=row["attempts"], next_attempt_at=row["next_attempt_at"],
        last_status_code=row["last_status_code"], last_error=row["last_error"],
        created_at=row["created_at"], delivered_at=row["delivered_at"],
        lease_until=row["lease_until"])


class PostgresWebhookStore:
    """Webhook endpoints and deliveries in PostgreSQL (``PostgresBackend.webhooks``).

    ``ready`` returns the backend's pool (opening it on first use); ``errors`` is the backend's
    driver-error translator.
    """

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator) -> None:
        self._ready = ready
        self._errors = errors
        #: Whether this backend's claims and finishes write their jobs' deliveries.
        self.lifecycle = False

    def record_lifecycle(self, events: frozenset[str]) -> frozenset[str]:
        # The finish writes the attempt's events (job.started too; the heartbeat writes it
        # earlier for a job that runs longer), in the statement that changes the job: no
        # Python per event, and a delivery exists exactly when its change committed.
        handled = events & LIFECYCLE_EVENTS
        self.lifecycle = bool(handled)
        return handled

    async def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        e = endpoint
        with self._errors:
            pool = await self._ready()
            await call(pool.execute, INSERT_ENDPOINT, e.id, e.url,
                       None if e.events is None else list(e.events), e.secrets, e.allow_private,
                       e.active, e.description, e.created_at)

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, f"SELECT {_ENDPOINT} FROM soniq_webhook_endpoints "
                                            "WHERE id = $1::uuid", endpoint_id)
        return None if row is None else _endpoint(row)

    async def list_endpoints(self) -> builtins.list[WebhookEndpoint]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, f"SELECT {_ENDPOINT} FROM soniq_webhook_endpoints "
                                          "ORDER BY created_at, id")
        return [_endpoint(row) for row in rows]

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        with self._errors:
            pool = await self._ready()
            return await call(pool.fetchval, DELETE_ENDPOINT, endpoint_id) is not None

    async def set_secrets(self, endpoint_id: str, secrets: str, *,
                          expected: str | None = None) -> bool:
        with self._errors:
            pool = await self._ready()
            return await call(pool.fetchval, SET_SECRETS, endpoint_id, secrets,
                              expected) is not None

    async def add_events(self, events: Sequence[WebhookEvent]) -> int:
        if not events:
            return 0
        with self._errors:
            pool = await self._ready()
            kinds, job_ids, names, queues, attempts, errors, ats = zip(*events, strict=True)
            status = await call(pool.execute, INSERT_EVENTS, *map(json.dumps, (
                kinds, job_ids, names, queues, attempts, errors, [at.timestamp() for at in ats])))
        return int(status.rsplit(" ", 1)[1])

    async def claim(self, now: datetime, *, lease_until: datetime,
                    limit: int) -> builtins.list[WebhookDelivery]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, CLAIM, lease_until, now, limit)
        return sorted((_delivery(row) for row in rows), key=lambda d: (d.next_attempt_at, d.id))

    async def finish(self, delivery_id: str, *, lease_until: datetime, status: str,
                     attempts: int, next_attempt_at: datetime, status_code: int | None,
                     error: str | None, delivered_at: datetime | None) -> bool:
        with self._errors:
            pool = await self._ready()
            return await call(pool.fetchval, FINISH, delivery_id, lease_until, status, attempts,
                              next_attempt_at, status_code, error, delivered_at) is not None

    async def list_deliveries(self, *, endpoint_id: str | None, status: str | None,
                              limit: int) -> builtins.list[WebhookDelivery]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, LIST_DELIVERIES, endpoint_id, status, limit)
        return [_delivery(row) for row in rows]

    async def prune_deliveries(self, *, before: datetime) -> int:
        with self._errors:
            pool = await self._ready()
            return await call(_prune, pool, before)


async def _prune(pool: Any, before: datetime) -> int:
    """Delete finished deliveries in batches, each its own short transaction."""
    total = 0
    while True:
        status = await pool.execute(PRUNE_DELIVERIES, before, PRUNE_BATCH)
        deleted = int(status.rpartition(" ")[2])
        total += deleted
        if deleted < PRUNE_BATCH:
            return total
