"""The job definition store on SQLite (:class:`~soniq.backends.stores.DefinitionStore`): its SQL
and the calls that run it. ``options`` is JSON text; timestamps are stored as in :mod:`.sql`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.backends.definitions import stored_definition
from soniq.backends.sqlite import sql
from soniq.serialization import dumps, utc_now

if TYPE_CHECKING:
    import builtins
    from collections.abc import Sequence
    from datetime import datetime

    from soniq.backends.sqlite.database import SqliteDatabase
    from soniq.backends.stores import JobDefinition, StoredDefinition

__all__ = ["SqliteDefinitionStore"]

_COLUMNS = ("name", "digest", "queue", "priority", "max_attempts", "timeout", "encrypt", "options",
            "first_seen_at", "last_seen_at")

#: The definition's 8 columns, then now (first and last seen). first_seen_at is never updated.
UPSERT = f"""
INSERT INTO soniq_job_definitions ({", ".join(_COLUMNS)})
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
ON CONFLICT (name, digest) DO UPDATE
SET last_seen_at = max(soniq_job_definitions.last_seen_at, excluded.last_seen_at)
"""

#: ?1 name (NULL: every name).
SELECT = (f"SELECT {', '.join(_COLUMNS)} FROM soniq_job_definitions "
          "WHERE ?1 IS NULL OR name = ?1 ORDER BY name, first_seen_at, digest")


#: limit: the names of the first claimable jobs, in soniq_jobs_claim's order.
WAITING = ("SELECT DISTINCT job_name FROM (SELECT job_name FROM soniq_jobs "
           "WHERE status = 'queued' AND hold IS NULL AND rate_key IS NULL "
           "ORDER BY priority, scheduled_at, id LIMIT ?) ORDER BY job_name")


class SqliteDefinitionStore:
    """Job definitions in one SQLite file (reached as ``SqliteBackend.definitions``)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def upsert(self, definitions: Sequence[JobDefinition], *,
                     now: datetime | None = None) -> None:
        at = sql.to_db(now or utc_now())
        rows = [(d.name, d.digest, d.queue, d.priority, d.max_attempts, d.timeout,
                 1 if d.encrypt else 0, dumps(dict(d.options), what="job options"), at)
                for d in definitions]
        if rows:
            await self._db.run(self._upsert, rows)

    async def _upsert(self, rows: list[tuple[Any, ...]]) -> None:
        async with self._db.transaction() as conn:
            await conn.executemany(UPSERT, rows)

    async def list(self, name: str | None = None) -> builtins.list[StoredDefinition]:
        rows = await self._db.run(self._db.read, SELECT, (name,))
        found = (stored_definition(dict(zip(_COLUMNS, row, strict=True))) for row in rows)
        return [d for d in found if d is not None]

    async def waiting(self, limit: int) -> builtins.list[str]:
        return [row[0] for row in await self._db.run(self._db.read, WAITING, (limit,))]
