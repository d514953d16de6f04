"""Running jobs' progress and checkpoints on PostgreSQL (``PostgresBackend.job_states``): one
UPDATE for a whole batch (arrays unnested), fenced by the lease like a finish. Every driver call
goes through :func:`soniq.backends._bridge.call` and driver errors through the backend's
translator."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.names import Names
    from soniq.types import JobState

__all__ = ["PostgresJobStateStore"]


class _Sql:
    """This store's statement for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        #: $1 ids, $2 leases, $3 progress (JSON text), $4 checkpoints (stored text); a NULL
        #: keeps the column. A lost race matches no row.
        self.save = f"""
UPDATE {n.jobs} AS j
SET progress = COALESCE(s.progress::jsonb, j.progress),
    checkpoint = COALESCE(s.checkpoint, j.checkpoint)
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])
     AS s (id, lease_id, progress, checkpoint)
WHERE j.id = s.id AND j.status = 'processing' AND j.lease_id = s.lease_id
RETURNING j.id::text
"""


_sql = functools.cache(_Sql)


class PostgresJobStateStore:
    """Progress and checkpoints in PostgreSQL. ``ready`` returns the backend's pool (opening it
    on first use); ``errors`` is the backend's driver-error translator."""

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 names: Names) -> None:
        self._ready = ready
        self._errors = errors
        self._sql = _sql(names)

    async def save(self, states: Sequence[JobState]) -> list[str]:
        if not states:
            return []
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.save, [s.job_id for s in states],
                              [s.lease_id for s in states], [s.progress for s in states],
                              [s.checkpoint for s in states])
        return [row[0] for row in rows]
