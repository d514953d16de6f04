"""Workflows on SQLite: the workflow row's statement (written by ``SqliteBackend.insert_workflow``
in the transaction of its steps) and the store that reads workflows back
(:class:`~soniq.backends.stores.WorkflowStore`). Timestamps are stored as in :mod:`.sql`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from soniq.backends.sqlite import sql
from soniq.backends.stores import StoredStep, StoredWorkflow

if TYPE_CHECKING:
    import builtins

    from soniq.backends.sqlite.database import SqliteDatabase

__all__ = ["INSERT_WORKFLOW", "SqliteWorkflowStore"]

#: id, name, kind, created_at.
INSERT_WORKFLOW = "INSERT INTO soniq_workflows (id, name, kind, created_at) VALUES (?, ?, ?, ?)"

_SELECT = """
SELECT w.id, w.name, w.kind, w.created_at,
       (SELECT json_group_object(c.status, c.n)
        FROM (SELECT status, count(*) AS n FROM soniq_jobs WHERE workflow_id = w.id
              GROUP BY status) AS c) AS counts
FROM soniq_workflows AS w
"""
#: id.
_GET = _SELECT + "WHERE w.id = ?"
#: before (NULL: from the newest), limit.
_LIST = _SELECT + "WHERE ?1 IS NULL OR w.id < ?1 ORDER BY w.id DESC LIMIT ?2"
#: id, limit (-1: all): the steps, each with its dependencies (JSON, in id order).
_STEPS = """
SELECT j.id, j.step_name, j.job_name, j.status, j.created_at, j.started_at, j.finished_at,
       (SELECT json_group_array(dependency)
        FROM (SELECT d.dependency FROM soniq_dependencies AS d WHERE d.dependent = j.id
              ORDER BY d.dependency)) AS depends_on
FROM soniq_jobs AS j WHERE j.workflow_id = ? ORDER BY j.id LIMIT ?
"""

#: batch: the oldest workflow rows without a step left.
_PRUNE = """
DELETE FROM soniq_workflows WHERE id IN (
    SELECT w.id FROM soniq_workflows AS w
    WHERE NOT EXISTS (SELECT 1 FROM soniq_jobs AS j WHERE j.workflow_id = w.id)
    ORDER BY w.id LIMIT ?)
RETURNING id
"""

def _at(text: str | None) -> Any:
    return None if text is None else sql.from_db(text)


def _workflow(row: Any) -> StoredWorkflow:
    workflow_id, name, kind, created_at, counts = row
    return StoredWorkflow(id=workflow_id, name=name, kind=kind, created_at=sql.from_db(created_at),
                          counts=json.loads(counts) if counts else {})


class SqliteWorkflowStore:
    """Workflows in one SQLite file (reached as ``SqliteBackend.workflows``)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def get(self, workflow_id: str) -> StoredWorkflow | None:
        if not isinstance(workflow_id, str):
            return None
        rows = await self._db.run(self._db.read, _GET, (workflow_id,))
        return _workflow(rows[0]) if rows else None

    async def steps(self, workflow_id: str, *,
                    limit: int | None = None) -> builtins.list[StoredStep]:
        if not isinstance(workflow_id, str):
            return []
        rows = await self._db.run(self._db.read, _STEPS,
                                  (workflow_id, -1 if limit is None else limit))
        return [StoredStep(id=job_id, step_name=step, job_name=name, status=status,
                           depends_on=tuple(json.loads(deps)), created_at=sql.from_db(created),
                           started_at=_at(started), finished_at=_at(finished))
                for job_id, step, name, status, created, started, finished, deps in rows]

    async def prune(self) -> int:
        return await self._db.run(self._db.prune, _PRUNE)

    async def list(self, *, before: str | None, limit: int) -> builtins.list[StoredWorkflow]:
        rows = await self._db.run(self._db.read, _LIST, (before, limit))
        return [_workflow(row) for row in rows]
