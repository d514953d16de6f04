"""Flow control on PostgreSQL: the claims that skip paused queues without walking their
backlog, and the queue-settings and audit stores (:mod:`soniq.backends.control`).

The plain claims (:mod:`.sql`) exclude paused queues themselves, but they walk
``soniq_jobs_claim_idx`` in claim order and filter: a paused queue of a more urgent priority
would be walked and filtered row by row on every claim. A worker whose view of the settings
(``claim_jobs(paused=...)``) names a paused queue it serves claims with these instead:

- every queue (:attr:`Claims.unpaused`): the distinct queues with queued jobs, found by a
  recursive "loose index scan" over ``soniq_jobs_queue_claim_idx`` (one probe per queue), minus
  the queues paused *now* (the same init plan as the plain claims: the worker's view only picks
  the shape); then per queue, in a LATERAL, its first ``$3`` due rows from that index
  ``FOR UPDATE SKIP LOCKED``; then the first ``$3`` of those by (priority, scheduled_at, id);
- the queues in ``$6`` (:attr:`Claims.listed_unpaused`): the same LATERAL over the given list.

The cost is one index probe per queue with queued jobs and up to ``$3`` rows locked per
unpaused queue (those not taken are unlocked when the claim commits), whatever the paused
backlog: fine for tens of queues, not for thousands. Parameters are the plain claims'. Both are
written once per schema (``db_schema``), like every statement (:func:`claims`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.control import QUEUE_DEFAULTS, QUEUE_FIELDS, QueueSetting
from soniq.backends.postgres import sql
from soniq.types import AuditEntry

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Sequence

    from soniq.backends.control import QueueField, QueueValue
    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.names import Names

__all__ = ["Claims", "PostgresAuditStore", "PostgresQueueStore", "claims"]

_AUDIT = "at, actor, client, action, targets, outcome, detail"
#: A changed rate starts with a full bucket.
_REFILL = ", tokens = NULL, refilled_at = NULL"
_TYPES: dict[QueueField, str] = {
    "paused": "boolean", "concurrency_limit": "integer", "rate_limit": "text"}


def _per_queue(n: Names) -> str:
    """One queue's first $3 due rows, in claim order, from soniq_jobs_queue_claim_idx; "wanted"
    is the row source naming the queue. The queue is matched as a range (>= and <=), not with =,
    and leads the ORDER BY: with =, it is a constant the planner drops from the order, and it may
    then walk soniq_jobs_claim_idx filtering by queue -- through every row of the more urgent
    queues, which it cannot foresee (priority and queue correlate). As written, only
    soniq_jobs_queue_claim_idx gives the order without a sort."""
    return f"""
    CROSS JOIN LATERAL (
        SELECT id, priority, scheduled_at FROM {n.jobs}
        WHERE status = 'queued' AND hold IS NULL AND {sql.known('$5')}
          AND queue >= wanted.queue AND queue <= wanted.queue
          AND scheduled_at <= COALESCE($2::timestamptz, now())
        ORDER BY queue, priority, scheduled_at, id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ) AS c
"""


_TOP = """
    ORDER BY c.priority, c.scheduled_at, c.id
    LIMIT $3
"""


class Claims:
    """The claims that skip paused queues without walking their backlog, for one schema
    (:func:`claims`)."""

    def pick(self, q: sql.Sql, queues: Sequence[str] | None,
             paused: frozenset[str]) -> tuple[str, tuple[Any, ...]]:
        """The claim statement for ``queues`` and its extra parameters. Every claim excludes
        the queues paused now; ``paused`` (the worker's view) only picks a shape that does not
        walk their backlog. One queue needs none: paused, it is a one-time filter."""
        if queues is None:
            return (self.unpaused if paused else q.claim_all_queues), ()
        if len(queues) > 1 and paused.intersection(queues):
            return self.listed_unpaused, (list(dict.fromkeys(queues)),)
        if len(queues) == 1:
            return q.claim_one_queue, (queues[0],)
        return q.claim_some_queues, (list(queues),)

    def __init__(self, n: Names) -> None:
        #: Claim from every queue that is not paused.
        self.unpaused = sql.claim(n, f"""
    WITH RECURSIVE queued (queue) AS (
        (SELECT queue FROM {n.jobs} WHERE status = 'queued' AND hold IS NULL
         ORDER BY queue LIMIT 1)
        UNION ALL
        SELECT (SELECT j.queue FROM {n.jobs} AS j
                WHERE j.status = 'queued' AND j.hold IS NULL AND j.queue > queued.queue
                ORDER BY j.queue LIMIT 1)
        FROM queued WHERE queued.queue IS NOT NULL
    )
    SELECT c.id FROM queued AS wanted
    {_per_queue(n)}
    WHERE wanted.queue IS NOT NULL AND wanted.queue <> ALL ({sql.closed_queues(n)})
    {_TOP}
""")
        #: Claim from the queues in $6 that are not paused.
        self.listed_unpaused = sql.claim(n, f"""
    SELECT c.id FROM unnest($6::text[]) AS wanted (queue)
    {_per_queue(n)}
    WHERE wanted.queue <> ALL ({sql.closed_queues(n)})
    {_TOP}
""")


claims = functools.cache(Claims)


class _Sql:
    """The stores' statements for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        self.list_queues = (f"SELECT name, paused, concurrency_limit, rate_limit, updated_at "
                            f"FROM {n.queues} ORDER BY name")
        #: Per field: $1 name. Its stored value, the row locked until the change commits.
        self.get = {field: f"SELECT {field} FROM {n.queues} WHERE name = $1::text FOR UPDATE"
                    for field in QUEUE_FIELDS}
        #: Per field: $1 name, $2 value. Store it and tell the workers (delivered at commit).
        self.set = {field: f"""
WITH stored AS (
    INSERT INTO {n.queues} AS q (name, {field}, updated_at)
    VALUES ($1::text, $2::{_TYPES[field]}, now())
    ON CONFLICT (name) DO UPDATE SET {field} = EXCLUDED.{field}, updated_at = EXCLUDED.updated_at
        {_REFILL if field == "rate_limit" else ""}
    RETURNING name
)
SELECT pg_notify('{n.queues_channel}', name) FROM stored
""" for field in QUEUE_FIELDS}
        #: $1 at, $2 actor, $3 client, $4 action, $5 targets, $6 outcome, $7 detail.
        self.record = (f"INSERT INTO {n.audit} ({_AUDIT}) VALUES ($1::timestamptz, $2::text, "
                       "$3::text, $4::text, $5::text[], $6::text, $7::text)")
        #: $1 limit. Newest first.
        self.list_audit = f"SELECT {_AUDIT} FROM {n.audit} ORDER BY id DESC LIMIT $1::integer"


_sql = functools.cache(_Sql)


def _audit_params(entry: AuditEntry) -> tuple[Any, ...]:
    return (entry.at, entry.actor, entry.client, entry.action, list(entry.targets),
            entry.outcome, entry.detail)


class PostgresAuditStore:
    """The audit log in PostgreSQL (``PostgresBackend.audit``). ``ready`` returns the backend's
    pool; ``errors`` is its driver-error translator."""

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 names: Names) -> None:
        self._ready = ready
        self._errors = errors
        self._sql = _sql(names)

    async def record(self, entry: AuditEntry) -> None:
        with self._errors:
            pool = await self._ready()
            await call(pool.execute, self._sql.record, *_audit_params(entry))

    async def list(self, limit: int) -> builtins.list[AuditEntry]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.list_audit, limit)
        return [AuditEntry(at=row["at"], actor=row["actor"], client=row["client"],
                           action=row["action"], targets=tuple(row["targets"]),
                           outcome=row["outcome"], detail=row["detail"]) for row in rows]


class PostgresQueueStore:
    """Queue settings in PostgreSQL (``PostgresBackend.queues``)."""

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 names: Names) -> None:
        self._ready = ready
        self._errors = errors
        self._sql = _sql(names)

    async def list(self) -> builtins.list[QueueSetting]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.list_queues)
        return [QueueSetting(**dict(row)) for row in rows]

    async def set(self, name: str, field: QueueField, value: QueueValue, *,
                  audit: AuditEntry) -> bool:
        with self._errors:
            pool = await self._ready()
            changed: bool = await call(_set, pool, self._sql, name, field, value, audit)
        return changed


async def _set(pool: Any, q: _Sql, name: str, field: QueueField, value: QueueValue,
               audit: AuditEntry) -> bool:
    """Runs on the driver's loop: the change and its audit row as one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(q.get[field], name)
        changed = (QUEUE_DEFAULTS[field] if row is None else row[0]) != value
        if changed:
            await conn.execute(q.set[field], name, value)
        outcome = "ok" if changed else "not_applied"
        await conn.execute(q.record, *_audit_params(dataclasses.replace(audit, outcome=outcome)))
    return changed
