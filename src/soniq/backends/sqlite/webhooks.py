"""The webhook store on SQLite (:class:`~soniq.backends.stores.WebhookStore`): its SQL and the
calls that run it.

The claim is one guarded ``UPDATE ... RETURNING`` (SQLite serialises writers), so a delivery is
leased to one worker at a time; :meth:`SqliteWebhookStore.finish` is fenced by that lease.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from soniq.backends.sqlite import sql
from soniq.backends.sqlite.where import where
from soniq.backends.stores import (
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookMessage,
    fan_out,
)

if TYPE_CHECKING:
    import builtins
    from collections.abc import Sequence
    from datetime import datetime

    from soniq.backends.sqlite.database import SqliteDatabase

__all__ = ["SqliteWebhookStore"]

_ENDPOINT = "id, url, events, secrets, allow_private, active, description, created_at"
_DELIVERY = ("id, endpoint_id, event, payload, status, attempts, next_attempt_at, "
             "last_status_code, last_error, created_at, delivered_at, lease_until")

#: ?1 lease_until, ?2 now, ?3 limit.
CLAIM = f"""
UPDATE soniq_webhook_deliveries SET lease_until = ?1
WHERE id IN (SELECT id FROM soniq_webhook_deliveries
             WHERE status = 'pending' AND next_attempt_at <= ?2
               AND (lease_until IS NULL OR lease_until <= ?2)
             ORDER BY next_attempt_at, id LIMIT ?3)
RETURNING {_DELIVERY}
"""

FINISH = """
UPDATE soniq_webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?,
       last_status_code = ?, last_error = ?, delivered_at = ?, lease_until = NULL
WHERE id = ? AND lease_until = ? RETURNING id
"""

#: ?1 before, ?2 batch size. The partial index soniq_webhook_deliveries_finished serves it.
PRUNE = """
DELETE FROM soniq_webhook_deliveries WHERE id IN (
    SELECT id FROM soniq_webhook_deliveries
    WHERE status <> 'pending' AND next_attempt_at < ?1
    LIMIT ?2)
RETURNING id
"""
#: Rows deleted per prune statement: short write locks, so other writers slip in between.
PRUNE_BATCH = 1000

INSERT_DELIVERY = f"""
INSERT INTO soniq_webhook_deliveries ({_DELIVERY}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def _opt(value: str | None) -> datetime | None:
    return None if value is None else sql.from_db(value)


def _endpoint(row: Sequence[Any]) -> WebhookEndpoint:
    id_, url, events, secrets, allow_private, active, description, created_at = row
    return WebhookEndpoint(
        id=id_, url=url, events=None if events is None else tuple(json.loads(events)),
        secrets=secrets, allow_private=bool(allow_private), active=bool(active),
        description=description, created_at=sql.from_db(created_at))


def _delivery(row: Sequence[Any]) -> WebhookDelivery:
    (id_, endpoint_id, event, payload, status, attempts, next_at, code, error, created_at,
     delivered_at, lease_until) = row
    return WebhookDelivery(
        id=id_, endpoint_id=endpoint_id, event=event, payload=payload, status=status,
        attempts=attempts, next_attempt_at=sql.from_db(next_at), last_status_code=code,
        last_error=error, created_at=sql.from_db(created_at), delivered_at=_opt(delivered_at),
        lease_until=_opt(lease_until))


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else sql.to_db(value)


class SqliteWebhookStore:
    """Webhook endpoints and deliveries in one SQLite file (``SqliteBackend.webhooks``)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        e = endpoint
        await self._db.run(
            self._db.write, f"INSERT INTO soniq_webhook_endpoints ({_ENDPOINT}) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (e.id, e.url, None if e.events is None else json.dumps(list(e.events)), e.secrets,
             int(e.allow_private), int(e.active), e.description, sql.to_db(e.created_at)))

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        rows = await self._db.run(
            self._db.read, f"SELECT {_ENDPOINT} FROM soniq_webhook_endpoints WHERE id = ?",
            (endpoint_id,))
        return _endpoint(rows[0]) if rows else None

    async def list_endpoints(self) -> builtins.list[WebhookEndpoint]:
        rows = await self._db.run(
            self._db.read,
            f"SELECT {_ENDPOINT} FROM soniq_webhook_endpoints ORDER BY created_at, id", ())
        return [_endpoint(row) for row in rows]

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        rows = await self._db.run(
            self._db.write, "DELETE FROM soniq_webhook_endpoints WHERE id = ? RETURNING id",
            (endpoint_id,))
        return bool(rows)

    async def set_secrets(self, endpoint_id: str, secrets: str, *,
                          expected: str | None = None) -> bool:
        rows = await self._db.run(
            self._db.write,
            "UPDATE soniq_webhook_endpoints SET secrets = ?2 "
            "WHERE id = ?1 AND (?3 IS NULL OR secrets = ?3) RETURNING id",
            (endpoint_id, secrets, expected))
        return bool(rows)

    def record_lifecycle(self, events: frozenset[str]) -> frozenset[str]:
        return frozenset()

    async def add_events(self, events: Sequence[WebhookEvent]) -> int:
        return await self._db.run(self._add, events) if events else 0

    async def add_messages(self, messages: Sequence[WebhookMessage]) -> int:
        return await self._db.run(self._add, messages) if messages else 0

    async def _add(self, events: Sequence[WebhookEvent | WebhookMessage]) -> int:
        # The endpoints are read inside the write transaction: one unregistered meanwhile gets
        # no rows (and the foreign key would refuse them).
        async with self._db.transaction() as conn:
            endpoints = [_endpoint(row) for row in await conn.execute_fetchall(
                f"SELECT {_ENDPOINT} FROM soniq_webhook_endpoints", ())]
            rows = fan_out(events, endpoints)
            await conn.executemany(INSERT_DELIVERY, [
                (d.id, d.endpoint_id, d.event, d.payload, d.status, d.attempts,
                 sql.to_db(d.next_attempt_at), d.last_status_code, d.last_error,
                 sql.to_db(d.created_at), _stamp(d.delivered_at), _stamp(d.lease_until))
                for d in rows])
        return len(rows)

    async def claim(self, now: datetime, *, lease_until: datetime,
                    limit: int) -> builtins.list[WebhookDelivery]:
        rows = await self._db.run(self._db.write, CLAIM,
                                  (sql.to_db(lease_until), sql.to_db(now), limit))
        return sorted((_delivery(row) for row in rows), key=lambda d: (d.next_attempt_at, d.id))

    async def finish(self, delivery_id: str, *, lease_until: datetime, status: str,
                     attempts: int, next_attempt_at: datetime, status_code: int | None,
                     error: str | None, delivered_at: datetime | None) -> bool:
        rows = await self._db.run(self._db.write, FINISH, (
            status, attempts, sql.to_db(next_attempt_at), status_code, error,
            _stamp(delivered_at), delivery_id, sql.to_db(lease_until)))
        return bool(rows)

    async def list_deliveries(self, *, endpoint_id: str | None, status: str | None,
                              limit: int) -> builtins.list[WebhookDelivery]:
        clause, params = where(("endpoint_id = ?", endpoint_id), ("status = ?", status))
        rows = await self._db.run(
            self._db.read, f"SELECT {_DELIVERY} FROM soniq_webhook_deliveries{clause} "
                           "ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit))
        return [_delivery(row) for row in rows]

    async def prune_deliveries(self, *, before: datetime) -> int:
        return await self._db.run(self._prune, sql.to_db(before))

    async def _prune(self, before: str) -> int:
        total = 0
        while True:
            deleted = len(await self._db.write(PRUNE, (before, PRUNE_BATCH)))
            total += deleted
            if deleted < PRUNE_BATCH:
                return total
