"""Durable functions' saved steps in SQLite (``SqliteBackend.steps``): ``soniq_steps``
(migration 0014), written in one ``BEGIN IMMEDIATE`` transaction per batch, fenced by the lease
like a finish; the first write flags the job (``has_steps``), whose delete then takes its steps."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from soniq.backends.sqlite.sql import to_db
from soniq.serialization import utc_now
from soniq.types.durable import StepRow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from soniq.backends.sqlite.database import SqliteDatabase
    from soniq.types.durable import StepWrite

__all__ = ["SqliteStepStore"]

LOAD = """
SELECT step_key, position, function, digest, status, value FROM soniq_steps
WHERE job_id = ? ORDER BY position
"""

#: The writes' jobs that hold their lease (a JSON array of [id, lease_id]).
FENCED = """
SELECT id, lease_id FROM soniq_jobs
WHERE status = 'processing' AND EXISTS (
    SELECT 1 FROM json_each(?) AS w
    WHERE json_extract(w.value, '$[0]') = soniq_jobs.id
      AND json_extract(w.value, '$[1]') = soniq_jobs.lease_id)
"""

PUT = """
INSERT INTO soniq_steps (job_id, step_key, position, function, digest, status, value, lease_id,
                         created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (job_id, step_key) DO NOTHING
"""

DROP = "DELETE FROM soniq_steps WHERE job_id = ? AND step_key = ?"

#: A job's first step write flags it: its delete then takes its steps (migration 0014's trigger).
FLAG = "UPDATE soniq_jobs SET has_steps = 1 WHERE id = ? AND has_steps IS NULL"


class SqliteStepStore:
    """Reads and writes ``soniq_steps`` in one SQLite file."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def load(self, job_id: str) -> list[StepRow]:
        rows = await self._db.run(self._db.read, LOAD, (job_id,))
        return [StepRow(*row) for row in rows]

    async def save(self, writes: Sequence[StepWrite]) -> list[str]:
        if not writes:
            return []
        return await self._db.run(self._save, writes)

    async def _save(self, writes: Sequence[StepWrite]) -> list[str]:
        pairs = json.dumps([[w.job_id, w.lease_id] for w in writes])
        now = to_db(utc_now())
        async with self._db.transaction() as conn:
            held = {(str(job_id), str(lease))
                    for job_id, lease in await conn.execute_fetchall(FENCED, (pairs,))}
            fenced = [w for w in writes if (w.job_id, w.lease_id) in held]
            puts: list[tuple[Any, ...]] = [
                (w.job_id, s.step_key, s.position, s.function, s.digest, s.status, s.value,
                 w.lease_id, now) for w in fenced for s in w.put]
            if puts:
                await conn.executemany(FLAG, [(job_id,) for job_id in {w.job_id for w in fenced
                                                                         if w.put}])
                await conn.executemany(PUT, puts)
            drops = [(w.job_id, key) for w in fenced for key in w.drop]
            if drops:
                await conn.executemany(DROP, drops)
        return [w.job_id for w in fenced]
