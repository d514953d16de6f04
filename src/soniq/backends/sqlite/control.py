"""Flow-control stores on SQLite (:mod:`soniq.backends.control`): queue settings and the audit
log, their SQL and the calls that run it. Timestamps are stored as in :mod:`.sql`; an audit
entry's targets are a JSON array. The claim (:func:`.sql.claim_sql`) reads ``soniq_queues``
itself."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from soniq.backends.control import QUEUE_DEFAULTS, QUEUE_FIELDS, QueueSetting
from soniq.backends.sqlite import sql
from soniq.types import AuditEntry

if TYPE_CHECKING:
    import builtins

    from soniq.backends.control import QueueField, QueueValue
    from soniq.backends.sqlite.database import SqliteDatabase

__all__ = ["SqliteAuditStore", "SqliteQueueStore"]

_SETTING = ("name", "paused", "concurrency_limit", "rate_limit", "updated_at")
LIST_QUEUES = f"SELECT {', '.join(_SETTING)} FROM soniq_queues ORDER BY name"
#: Per field: name. Its stored value.
GET = {field: f"SELECT {field} FROM soniq_queues WHERE name = ?" for field in QUEUE_FIELDS}
#: Per field: name, value, now.
#: A change of ``rate_limit`` refills the queue's bucket (NULL tokens: full).
SET = {field: (f"INSERT INTO soniq_queues (name, {field}, updated_at) VALUES (?, ?, ?) "
               f"ON CONFLICT (name) DO UPDATE SET {field} = excluded.{field}, "
               "updated_at = excluded.updated_at"
               + (", tokens = NULL, refilled_at = NULL" if field == "rate_limit" else ""))
       for field in QUEUE_FIELDS}

_AUDIT = ("at", "actor", "client", "action", "targets", "outcome", "detail")
RECORD = f"INSERT INTO soniq_audit ({', '.join(_AUDIT)}) VALUES (?, ?, ?, ?, ?, ?, ?)"
#: limit. Newest first.
LIST_AUDIT = f"SELECT {', '.join(_AUDIT)} FROM soniq_audit ORDER BY id DESC LIMIT ?"


def _audit_row(entry: AuditEntry) -> tuple[Any, ...]:
    return (sql.to_db(entry.at), entry.actor, entry.client, entry.action,
            json.dumps(list(entry.targets)), entry.outcome, entry.detail)


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    at, actor, client, action, targets, outcome, detail = row
    try:
        names = json.loads(targets)
    except ValueError:  # written by hand: show what is there
        names = [targets]
    listed = names if isinstance(names, list) else [names]
    return AuditEntry(at=sql.from_db(at), actor=actor, client=client, action=action,
                      targets=tuple(str(t) for t in listed), outcome=outcome, detail=detail)


class SqliteAuditStore:
    """The audit log in one SQLite file (``SqliteBackend.audit``)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def record(self, entry: AuditEntry) -> None:
        await self._db.run(self._db.write, RECORD, _audit_row(entry))

    async def list(self, limit: int) -> builtins.list[AuditEntry]:
        return [_entry(row) for row in await self._db.run(self._db.read, LIST_AUDIT, (limit,))]


class SqliteQueueStore:
    """Queue settings in one SQLite file (``SqliteBackend.queues``)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def list(self) -> builtins.list[QueueSetting]:
        rows = await self._db.run(self._db.read, LIST_QUEUES, ())
        return [QueueSetting(name=name, paused=bool(paused), concurrency_limit=limit,
                             rate_limit=rate, updated_at=sql.from_db(updated_at))
                for name, paused, limit, rate, updated_at in rows]

    async def set(self, name: str, field: QueueField, value: QueueValue, *,
                  audit: AuditEntry) -> bool:
        return await self._db.run(self._set, name, field, value, audit)

    async def _set(self, name: str, field: QueueField, value: QueueValue,
                   audit: AuditEntry) -> bool:
        async with self._db.transaction() as conn:  # BEGIN IMMEDIATE: no change in between
            rows = list(await conn.execute_fetchall(GET[field], (name,)))
            old = rows[0][0] if rows else QUEUE_DEFAULTS[field]
            changed = (bool(old) if field == "paused" else old) != value
            if changed:
                await conn.execute_fetchall(SET[field], (name, value, sql.to_db(audit.at)))
            outcome = "ok" if changed else "not_applied"
            await conn.execute_fetchall(RECORD, _audit_row(dataclasses.replace(audit, outcome=outcome)))
        return changed
