"""The job definition store on PostgreSQL (:class:`~soniq.backends.stores.DefinitionStore`): its
SQL and the calls that run it. One statement writes a worker's whole set (arrays unnested); every
driver call goes through :func:`soniq.backends._bridge.call` and driver errors through the
backend's translator."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.definitions import stored_definition
from soniq.serialization import dumps

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Sequence
    from datetime import datetime

    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.names import Names
    from soniq.backends.stores import JobDefinition, StoredDefinition

__all__ = ["PostgresDefinitionStore"]


class _Sql:
    """This store's statements for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        #: $1..$8 the definitions' columns as parallel arrays, $9 now (NULL: the database
        #: clock). first_seen_at is written on insert only.
        self.upsert = f"""
INSERT INTO {n.job_definitions} AS d
    (name, digest, queue, priority, max_attempts, timeout, encrypt, options, first_seen_at,
     last_seen_at)
SELECT name, digest, queue, priority, max_attempts, timeout, encrypt, options::jsonb,
       COALESCE($9::timestamptz, now()), COALESCE($9::timestamptz, now())
FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::integer[],
            $6::double precision[], $7::boolean[], $8::text[])
     AS u(name, digest, queue, priority, max_attempts, timeout, encrypt, options)
ON CONFLICT (name, digest) DO UPDATE
SET last_seen_at = GREATEST(d.last_seen_at, EXCLUDED.last_seen_at)
"""

        #: $1 name (NULL: every name).
        self.select = f"""
SELECT name, digest, queue, priority, max_attempts, timeout, encrypt, options::text AS options,
       first_seen_at, last_seen_at
FROM {n.job_definitions}
WHERE $1::text IS NULL OR name = $1::text
ORDER BY name, first_seen_at, digest
"""

        #: $1 limit: the names of the first claimable jobs, in soniq_jobs_claim_idx's order.
        self.waiting = f"""
SELECT DISTINCT job_name FROM (
    SELECT job_name FROM {n.jobs} WHERE status = 'queued' AND hold IS NULL
    ORDER BY priority, scheduled_at, id LIMIT $1::integer
) AS first
"""


_sql = functools.cache(_Sql)


class PostgresDefinitionStore:
    """Job definitions in PostgreSQL (reached as ``PostgresBackend.definitions``).

    ``ready`` returns the backend's pool (opening it on first use); ``errors`` is the backend's
    driver-error translator; ``names`` says where the definitions are.
    """

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 names: Names) -> None:
        self._ready = ready
        self._errors = errors
        self._sql = _sql(names)

    async def upsert(self, definitions: Sequence[JobDefinition], *,
                     now: datetime | None = None) -> None:
        if not definitions:
            return
        columns: list[list[Any]] = [[] for _ in range(8)]
        for d in definitions:
            for column, value in zip(columns, (
                    d.name, d.digest, d.queue, d.priority, d.max_attempts, d.timeout, d.encrypt,
                    dumps(dict(d.options), what="job options")), strict=True):
                column.append(value)
        params: list[Any] = [*columns, now]
        with self._errors:
            pool = await self._ready()
            await call(pool.execute, self._sql.upsert, *params)

    async def list(self, name: str | None = None) -> builtins.list[StoredDefinition]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.select, name)
        found = (stored_definition(dict(row)) for row in rows)
        return [d for d in found if d is not None]

    async def waiting(self, limit: int) -> builtins.list[str]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.waiting, limit)
        return sorted(row["job_name"] for row in rows)
