"""Durable functions' saved steps on PostgreSQL (``PostgresBackend.steps``): ``soniq_steps``
(migration 0020). A batch of writes is one statement: the jobs that hold their lease are locked
``FOR SHARE`` (a rescue waits for the write, and the write never lands after the job moved on),
flagged ``has_steps`` on their first write (their delete then takes their steps: migration
0020's trigger), their rows inserted ``ON CONFLICT DO NOTHING`` and their dropped keys deleted. Every driver call
goes through :func:`soniq.backends._bridge.call` and driver errors through the backend's
translator."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.types.durable import StepRow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.names import Names
    from soniq.types.durable import StepWrite

__all__ = ["PostgresStepStore"]


class _Sql:
    """This store's statements for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        self.load = f"""
SELECT step_key, position, function, digest, status, value FROM {n.steps}
WHERE job_id = $1::uuid ORDER BY position
"""
        #: $1 job ids, $2 leases (one per write); then per item: $3 job ids, $4 leases, $5
        #: 'put' or 'drop', $6 keys, $7 positions, $8 functions, $9 digests, $10 statuses,
        #: $11 values.
        self.save = f"""
WITH fenced AS (
    SELECT j.id, j.lease_id FROM {n.jobs} AS j
    JOIN unnest($1::uuid[], $2::uuid[]) AS w (id, lease_id)
      ON j.id = w.id AND j.lease_id = w.lease_id
    WHERE j.status = 'processing'
    FOR SHARE OF j
), item AS (
    SELECT DISTINCT ON (i.job_id, i.op, i.step_key) i.*
    FROM unnest($3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::int[], $8::text[],
                $9::text[], $10::text[], $11::text[])
         AS i (job_id, lease_id, op, step_key, position, function, digest, status, value)
    JOIN fenced AS f ON f.id = i.job_id AND f.lease_id = i.lease_id
), flag AS (
    UPDATE {n.jobs} AS j SET has_steps = true
    FROM (SELECT DISTINCT job_id FROM item WHERE op = 'put') AS p
    WHERE j.id = p.job_id AND j.has_steps IS NULL
), put AS (
    INSERT INTO {n.steps} (job_id, step_key, position, function, digest, status, value,
                           lease_id)
    SELECT job_id, step_key, position, function, digest, status, value, lease_id
    FROM item WHERE op = 'put'
    ON CONFLICT (job_id, step_key) DO NOTHING
), dropped AS (
    DELETE FROM {n.steps} AS s USING item
    WHERE item.op = 'drop' AND s.job_id = item.job_id AND s.step_key = item.step_key
)
SELECT id::text FROM fenced
"""


_sql = functools.cache(_Sql)


class PostgresStepStore:
    """``soniq_steps`` in PostgreSQL. ``ready`` returns the backend's pool (opening it on first
    use); ``errors`` is the backend's driver-error translator."""

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 names: Names) -> None:
        self._ready = ready
        self._errors = errors
        self._sql = _sql(names)

    async def load(self, job_id: str) -> list[StepRow]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.load, job_id)
        return [StepRow(*row) for row in rows]

    async def save(self, writes: Sequence[StepWrite]) -> list[str]:
        if not writes:
            return []
        items: list[tuple[Any, ...]] = []
        for w in writes:
            items.extend((w.job_id, w.lease_id, "put", *step) for step in w.put)
            items.extend((w.job_id, w.lease_id, "drop", key, 0, "", "", "", None)
                         for key in w.drop)
        columns = list(zip(*items, strict=True)) if items else [()] * 9
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.save, [w.job_id for w in writes],
                              [w.lease_id for w in writes], *(list(c) for c in columns))
        return [row[0] for row in rows]
