"""The webhook store on PostgreSQL (:class:`~soniq.backends.stores.WebhookStore`): its SQL and
the calls that run it.

Events wait in a log of the webhooks' own first (``soniq_webhook_events``: one row per batch of
events and subscribed endpoint, the events as parallel arrays). The lifecycle events come from the
backend's event log (:mod:`.events`), which the statements that change jobs write while this
store reads it (:meth:`PostgresWebhookStore.record_lifecycle`); claiming or listing deliveries
first takes those rows and fans each out to the endpoints subscribed to its events
(``_Sql.ingest``). :meth:`PostgresWebhookStore.add_events` writes the other events straight
into the webhooks' log. Then the log rows become delivery rows (``_Sql.expand``), per endpoint,
while the endpoint has fewer than :data:`WINDOW` pending deliveries: a busy worker writes one
small row per finished batch instead of two delivery rows per job, and a receiver that never
answers holds a window of rows while the rest of its events wait, compact, in the log.

The claim is one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)``: concurrent workers
skip each other's rows, and the lease it writes fences :meth:`PostgresWebhookStore.finish`.
Every driver call goes through :func:`soniq.backends._bridge.call` and driver errors through the
backend's translator.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.postgres import events as log
from soniq.backends.postgres.maintenance import maintenance, prune_in_batches
from soniq.backends.postgres.where import where
from soniq.backends.stores import (
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookMessage,
    webhook_payload,
)

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from datetime import datetime

    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.events import EventLog
    from soniq.backends.postgres.names import Names

__all__ = ["PostgresWebhookStore"]

logger = logging.getLogger("soniq.webhooks")

#: This store's name among the event log's readers.
READER = "webhooks"

_ENDPOINT = ("id::text AS id, url, events, secrets::text AS secrets, allow_private, active, "
             "description, created_at")
_DELIVERY = ("d.id::text AS id, d.endpoint_id::text AS endpoint_id, d.event, "
             "d.payload, d.status, d.attempts, d.next_attempt_at, "
             "d.last_status_code, d.last_error, d.created_at, d.delivered_at, d.lease_until")

#: Subscribed endpoints' deliveries per :class:`WebhookEvent`, $1..$7 its columns as JSON
#: arrays (``at`` as unix seconds): encoding seven typed arrays cost a busy worker more than its
#: jobs did (JSON is encoded in C).
_EVENTS_JSON = """
    SELECT event, job_id, job_name, queue, attempt::integer AS attempt, error,
           to_timestamp(at::float8) AS at
    FROM unnest(ARRAY(SELECT json_array_elements_text($1::json)),
                ARRAY(SELECT json_array_elements_text($2::json)),
                ARRAY(SELECT json_array_elements_text($3::json)),
                ARRAY(SELECT json_array_elements_text($4::json)),
                ARRAY(SELECT json_array_elements_text($5::json)),
                ARRAY(SELECT json_array_elements_text($6::json)),
                ARRAY(SELECT json_array_elements_text($7::json)))
         AS u(event, job_id, job_name, queue, attempt, error, at)"""

#: Rows of the backend's event log taken per ``_Sql.ingest`` statement.
INGEST_BATCH = 100

#: Pending deliveries an endpoint may have before the log stops being turned into more for it.
WINDOW = 1000
#: Log rows taken per endpoint per statement (a finish records two events per job).
TAKE = 20

#: Rows deleted per prune statement: short transactions, few row locks held at once.
PRUNE_BATCH = 1000

#: How ``_Sql.expand`` writes a delivery's payload: exactly as ``webhook_payload`` builds it.
_PAYLOAD = """'{"type":' || to_json(r.event)::text
           || ',"timestamp":"' || to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
           || '+00:00","data":{"job_id":' || to_json(r.job_id)::text
           || ',"job_name":' || to_json(r.job_name)::text || ',"queue":' || to_json(r.queue)::text
           || ',"attempt":' || r.attempt::text
           || coalesce(',"error":' || to_json(r.error)::text, '') || '}}'"""


class _Sql:
    """This store's statements for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        self.get_endpoint = f"SELECT {_ENDPOINT} FROM {n.webhook_endpoints} WHERE id = $1::uuid"
        self.list_endpoints = (f"SELECT {_ENDPOINT} FROM {n.webhook_endpoints} "
                               "ORDER BY created_at, id")
        #: The backend's event log rows recorded before $1 (this store is its reader).
        self.expire = log.expire(n)
        #: The endpoint, and the store's name among the event log's readers (cancel and rescue
        #: record their events from any process while an endpoint exists).
        self.insert_endpoint = f"""
WITH {log.reader_added(n, READER)}
INSERT INTO {n.webhook_endpoints} (id, url, events, secrets, allow_private, active, description,
                                     created_at)
VALUES ($1::uuid, $2::text, $3::text[], $4::jsonb, $5::boolean, $6::boolean, $7::text,
        $8::timestamptz)
"""

        #: Records the events of :meth:`PostgresWebhookStore.add_events` in the log, as one row per
        #: active endpoint subscribed to any of them (each endpoint's events are picked out by
        #: ``expand``), and returns how many deliveries they become.
        self.insert_events = f"""
WITH given AS MATERIALIZED ({_EVENTS_JSON}),
recorded AS (
    INSERT INTO {n.webhook_events} (endpoint_id, job_ids, job_names, queues, attempts,
                                      started_ats, kinds, errors, ats)
    SELECT e.id, r.job_ids, r.job_names, r.queues, r.attempts, r.started_ats, r.kinds, r.errors,
           r.ats
    FROM (SELECT array_agg(job_id::uuid) AS job_ids, array_agg(job_name) AS job_names,
                 array_agg(queue) AS queues, array_agg(attempt) AS attempts,
                 array_agg(NULL::timestamptz) AS started_ats, array_agg(event) AS kinds,
                 array_agg(error) AS errors, array_agg(at) AS ats
          FROM given HAVING count(*) > 0) AS r
    JOIN {n.webhook_endpoints} AS e ON e.active AND (e.events IS NULL OR e.events && r.kinds))
SELECT count(*) FROM given AS g
JOIN {n.webhook_endpoints} AS e ON e.active AND (e.events IS NULL OR g.event = ANY (e.events))"""

        #: $1 events, $2 payloads, $3 times (parallel arrays): one pending delivery per message
        #: per active endpoint subscribed to it; how many.
        self.insert_messages = f"""
WITH written AS (
    INSERT INTO {n.webhook_deliveries} (id, endpoint_id, event, payload, status, attempts,
                                          next_attempt_at, created_at)
    SELECT gen_random_uuid(), e.id, m.event, m.payload, 'pending', 0, m.at, m.at
    FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS m(event, payload, at)
    JOIN {n.webhook_endpoints} AS e
      ON e.active AND (e.events IS NULL OR m.event = ANY (e.events))
    RETURNING 1)
SELECT count(*) FROM written"""

        #: $1 event log rows, $2 the event kinds webhooks deliver. Takes the oldest rows of the
        #: backend's event log (:func:`.events.take`) and writes each as one row of the webhooks'
        #: log per active endpoint subscribed to any of its job events -- endpoints as stored now,
        #: registered before the row was logged (both clocks: the endpoint's time is the registering
        #: process's). Returns how many event log rows it took.
        self.ingest = f"""
WITH {log.take(n)},
written AS (
    INSERT INTO {n.webhook_events} (endpoint_id, job_ids, job_names, queues, attempts,
                                      started_ats, kinds, errors, ats)
    SELECT e.id, array_agg(v.job_id), array_agg(v.payload ->> 'job_name'),
           array_agg(v.payload ->> 'queue'), array_agg(v.attempt), array_agg(v.started_at),
           array_agg(v.kind), array_agg(v.payload ->> 'error'), array_agg(v.at)
    FROM events AS v
    JOIN {n.webhook_endpoints} AS e
      ON e.active AND e.created_at <= v.logged_at
         AND (e.events IS NULL OR v.kind = ANY (e.events)
              OR (v.started_at IS NOT NULL AND 'job.started' = ANY (e.events)))
    WHERE v.job_id IS NOT NULL AND (v.kind IS NULL OR v.kind = ANY ($2::text[]))
    GROUP BY e.id, v.log_id
    ORDER BY v.log_id)
SELECT count(*) FROM taken"""

        #: $1 window, $2 log rows per endpoint. For each endpoint with room in its window, its
        #: oldest log rows that no other worker is taking (SKIP LOCKED; ``= ANY (ARRAY(...))``
        #: evaluates the locking subquery once) are deleted and become one pending delivery per
        #: event. The delivery id is a UUIDv7 of the event's time whose random part is a digest of
        #: (endpoint, job, event, attempt, time): time-ordered, so inserts stay at the right edge of
        #: the primary key, and the same for the same event, so an event recorded twice (a retry
        #: after an unanswered commit, or a heartbeat and a finish both recording ``job.started``)
        #: is delivered once. The payload is built exactly as ``webhook_payload`` builds it.
        self.expand = f"""
WITH batch AS (
    DELETE FROM {n.webhook_events}
    WHERE id = ANY (ARRAY(
        SELECT v.id
        FROM {n.webhook_endpoints} AS e CROSS JOIN LATERAL (
            SELECT v.id FROM {n.webhook_events} AS v
            WHERE v.endpoint_id = e.id
            ORDER BY v.id LIMIT $2::integer
            FOR UPDATE SKIP LOCKED) AS v
        WHERE (SELECT count(*) FROM (SELECT FROM {n.webhook_deliveries} AS d
                                     WHERE d.endpoint_id = e.id AND d.status = 'pending'
                                     LIMIT $1::integer) AS p) < $1::integer))
    RETURNING endpoint_id, job_ids, job_names, queues, attempts, started_ats, kinds, errors,
              ats),
written AS (
    INSERT INTO {n.webhook_deliveries} (id, endpoint_id, event, payload, status, attempts,
                                          next_attempt_at, created_at)
    SELECT (lpad(to_hex(r.us / 1000), 12, '0') || '7' || lpad(to_hex(r.us % 1000), 3, '0') || '8'
            || left(md5(r.endpoint_id::text || r.job_id || r.event || r.attempt::text
                        || r.us::text), 15))::uuid,
           r.endpoint_id, r.event,
           {_PAYLOAD},
           'pending', 0, r.at, r.at
    FROM (SELECT b.endpoint_id, u.job_id::text AS job_id, u.job_name, u.queue, u.attempt,
                 x.event, x.error, x.at, (extract(epoch FROM x.at) * 1000000)::bigint AS us
          FROM batch AS b
          JOIN {n.webhook_endpoints} AS e ON e.id = b.endpoint_id
          CROSS JOIN LATERAL unnest(b.job_ids, b.job_names, b.queues, b.attempts, b.started_ats,
                                    b.kinds, b.errors, b.ats)
               AS u(job_id, job_name, queue, attempt, started_at, kind, error, at)
          CROSS JOIN LATERAL (VALUES ('job.started', NULL::text, u.started_at),
                                     (u.kind, u.error, u.at)) AS x(event, error, at)
          WHERE x.event IS NOT NULL AND x.at IS NOT NULL
            AND (e.events IS NULL OR x.event = ANY (e.events))) AS r
    ON CONFLICT (id) DO NOTHING
    RETURNING 1)
SELECT count(*) FROM written"""

        #: The endpoint, its deliveries and its rows of the event log, in one statement; the store
        #: leaves the event log's readers with the last endpoint.
        others = f"EXISTS (SELECT 1 FROM {n.webhook_endpoints} WHERE id <> $1::uuid)"
        self.delete_endpoint = f"""
WITH deliveries AS (DELETE FROM {n.webhook_deliveries} WHERE endpoint_id = $1::uuid),
log AS (DELETE FROM {n.webhook_events} WHERE endpoint_id = $1::uuid),
{log.reader_removed(n, READER, unless=others)}
DELETE FROM {n.webhook_endpoints} WHERE id = $1::uuid RETURNING id
"""

        #: $1 lease_until, $2 now, $3 limit.
        self.claim = f"""
UPDATE {n.webhook_deliveries} AS d SET lease_until = $1::timestamptz
FROM (SELECT id FROM {n.webhook_deliveries}
      WHERE status = 'pending' AND next_attempt_at <= $2::timestamptz
        AND (lease_until IS NULL OR lease_until <= $2::timestamptz)
      ORDER BY next_attempt_at, id LIMIT $3::integer
      FOR UPDATE SKIP LOCKED) AS due
WHERE d.id = due.id
RETURNING {_DELIVERY}
"""

        self.finish = f"""
UPDATE {n.webhook_deliveries} SET status = $3::text, attempts = $4::integer,
       next_attempt_at = $5::timestamptz, last_status_code = $6::integer, last_error = $7::text,
       delivered_at = $8::timestamptz, lease_until = NULL
WHERE id = $1::uuid AND lease_until = $2::timestamptz
RETURNING id
"""

        #: $1 before, $2 batch size. The partial index soniq_webhook_deliveries_finished_idx serves
        #: it.
        self.prune_deliveries = f"""
DELETE FROM {n.webhook_deliveries}
WHERE id = ANY (ARRAY(
    SELECT id FROM {n.webhook_deliveries}
    WHERE status <> 'pending' AND next_attempt_at < $1::timestamptz
    LIMIT $2::integer
    FOR UPDATE SKIP LOCKED))
"""
        #: $1 before. Deletes the log rows recorded before $1 that their endpoint has not taken (its
        #: receiver accepted nothing for the whole retention); how many events they held.
        self.prune_events = f"""
WITH expired AS (DELETE FROM {n.webhook_events} WHERE created_at < $1::timestamptz
                 RETURNING cardinality(array_remove(kinds, NULL))
                      + cardinality(array_remove(started_ats, NULL)) AS events)
SELECT coalesce(sum(events), 0)::bigint FROM expired
"""

        self.set_secrets = f"""
UPDATE {n.webhook_endpoints} SET secrets = $2::jsonb
WHERE id = $1::uuid AND ($3::jsonb IS NULL OR secrets = $3::jsonb)
RETURNING id
"""

        #: $1 limit; the filters after it (see list_deliveries).
        self.list_deliveries = (f"SELECT {_DELIVERY} FROM {n.webhook_deliveries} AS d{{where}} "
                                "ORDER BY d.created_at DESC, d.id DESC LIMIT $1::integer")


_sql = functools.cache(_Sql)


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
    driver-error translator; pruning runs under ``maintenance_timeout`` (see
    :mod:`.maintenance`); ``names`` says where its tables and the event log are.
    """

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 maintenance_timeout: str, events: EventLog, names: Names) -> None:
        self._sql = _sql(names)
        self._ready = ready
        self._errors = errors
        self._maintenance_timeout = maintenance_timeout
        self._events = events

    def record_lifecycle(self, events: frozenset[str]) -> frozenset[str]:
        # The backend's event log has the lifecycle events (the finish records an attempt's
        # job.started and outcome, the heartbeat job.started earlier for a job that runs
        # longer), written by the statement that changes the job: no Python per event, and an
        # event exists exactly when its change committed. This store reads it while wanted.
        handled = events & log.LIFECYCLE_EVENTS
        self._events.read(READER, on=bool(handled))
        return handled

    async def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        e = endpoint
        with self._errors:
            pool = await self._ready()
            await call(pool.execute, self._sql.insert_endpoint, e.id, e.url,
                       None if e.events is None else list(e.events), e.secrets, e.allow_private,
                       e.active, e.description, e.created_at)

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, self._sql.get_endpoint, endpoint_id)
        return None if row is None else _endpoint(row)

    async def list_endpoints(self) -> builtins.list[WebhookEndpoint]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.list_endpoints)
        return [_endpoint(row) for row in rows]

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        with self._errors:
            pool = await self._ready()
            return await call(pool.fetchval, self._sql.delete_endpoint, endpoint_id) is not None

    async def set_secrets(self, endpoint_id: str, secrets: str, *,
                          expected: str | None = None) -> bool:
        with self._errors:
            pool = await self._ready()
            return await call(pool.fetchval, self._sql.set_secrets, endpoint_id, secrets,
                              expected) is not None

    async def add_events(self, events: Sequence[WebhookEvent]) -> int:
        # Recorded in the log; the deliveries are written when a worker claims or a caller
        # lists them (_Sql.expand).
        if not events:
            return 0
        with self._errors:
            pool = await self._ready()
            kinds, job_ids, names, queues, attempts, errors, ats = zip(*events, strict=True)
            recorded = await call(pool.fetchval, self._sql.insert_events, *map(json.dumps, (
                kinds, job_ids, names, queues, attempts, errors, [at.timestamp() for at in ats])))
        return recorded or 0

    async def add_messages(self, messages: Sequence[WebhookMessage]) -> int:
        if not messages:
            return 0
        with self._errors:
            pool = await self._ready()
            written = await call(pool.fetchval, self._sql.insert_messages,
                                 [m.event for m in messages],
                                 [webhook_payload(m) for m in messages], [m.at for m in messages])
        return int(written or 0)

    async def claim(self, now: datetime, *, lease_until: datetime,
                    limit: int) -> builtins.list[WebhookDelivery]:
        with self._errors:
            pool = await self._ready()
            await call(_expand, pool, self._sql)
            rows = await call(pool.fetch, self._sql.claim, lease_until, now, limit)
        return sorted((_delivery(row) for row in rows), key=lambda d: (d.next_attempt_at, d.id))

    async def finish(self, delivery_id: str, *, lease_until: datetime, status: str,
                     attempts: int, next_attempt_at: datetime, status_code: int | None,
                     error: str | None, delivered_at: datetime | None) -> bool:
        with self._errors:
            pool = await self._ready()
            return await call(pool.fetchval, self._sql.finish, delivery_id, lease_until, status,
                              attempts, next_attempt_at, status_code, error,
                              delivered_at) is not None

    async def list_deliveries(self, *, endpoint_id: str | None, status: str | None,
                              limit: int) -> builtins.list[WebhookDelivery]:
        clause, params = where(("d.endpoint_id = {}::uuid", endpoint_id),
                               ("d.status = {}::text", status), first=2)
        with self._errors:
            pool = await self._ready()
            await call(_expand, pool, self._sql)
            rows = await call(pool.fetch, self._sql.list_deliveries.format(where=clause), limit,
                              *params)
        return [_delivery(row) for row in rows]

    async def prune_deliveries(self, *, before: datetime) -> int:
        with self._errors:
            pool = await self._ready()
            return await call(_prune, pool, self._sql, before, self._maintenance_timeout)


async def _expand(pool: Any, q: _Sql) -> None:
    """Take the backend's event log into the webhooks' log, then turn that into deliveries."""
    kinds = sorted(log.LIFECYCLE_EVENTS)
    while await pool.fetchval(q.ingest, INGEST_BATCH, kinds) == INGEST_BATCH:
        pass
    await pool.fetchval(q.expand, WINDOW, TAKE)


async def _prune(pool: Any, q: _Sql, before: datetime, statement_timeout: str) -> int:
    """Delete finished deliveries in batches, each its own short transaction, and the log rows
    no endpoint needs any more (the backend's event log rows too: this store reads it)."""
    async with maintenance(pool, statement_timeout) as conn:
        await conn.execute(q.expire, before)
        expired = await conn.fetchval(q.prune_events, before)
    if expired:
        logger.warning("%d webhook event(s) expired before an endpoint took them (its receiver "
                       "accepted nothing for the whole retention)", expired)
    return await prune_in_batches(pool, statement_timeout, q.prune_deliveries, before,
                                  batch=PRUNE_BATCH)
