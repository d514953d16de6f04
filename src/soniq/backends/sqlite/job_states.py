"""Running jobs' progress and checkpoints in SQLite (``SqliteBackend.job_states``): one UPDATE
for a batch, fenced by the lease like a finish."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from soniq.backends.sqlite.database import SqliteDatabase
    from soniq.types import JobState

__all__ = ["SqliteJobStateStore"]

#: :outcomes-like JSON array of {id, lease_id, progress, checkpoint}; a NULL keeps the column.
SAVE = """
UPDATE soniq_jobs SET
    progress = coalesce(s.progress, soniq_jobs.progress),
    checkpoint = coalesce(s.checkpoint, soniq_jobs.checkpoint)
FROM (
    SELECT json_extract(value, '$.id') AS id,
           json_extract(value, '$.lease_id') AS lease_id,
           json_extract(value, '$.progress') AS progress,
           json_extract(value, '$.checkpoint') AS checkpoint
    FROM json_each(:states)
) AS s
WHERE soniq_jobs.id = s.id AND soniq_jobs.status = 'processing'
  AND soniq_jobs.lease_id = s.lease_id
RETURNING soniq_jobs.id
"""


class SqliteJobStateStore:
    """Writes :class:`~soniq.types.JobState` batches to one SQLite file."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def save(self, states: Sequence[JobState]) -> list[str]:
        if not states:
            return []
        payload = json.dumps([{"id": s.job_id, "lease_id": s.lease_id, "progress": s.progress,
                               "checkpoint": s.checkpoint} for s in states])
        rows = await self._db.run(self._db.write, SAVE, {"states": payload})
        return [str(row[0]) for row in rows]
