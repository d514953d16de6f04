"""Workflows on PostgreSQL: the insert of a workflow row with its steps (one transaction, the
steps through :func:`.dependencies.insert`) and the store that reads them back
(:class:`~soniq.backends.stores.WorkflowStore`). Every driver call goes through
:func:`soniq.backends._bridge.call` and driver errors through the backend's translator."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.postgres import dependencies
from soniq.backends.postgres.maintenance import PRUNE_BATCH_SIZE, prune_in_batches
from soniq.backends.stores import StoredStep, StoredWorkflow
from soniq.ids import is_uuid
from soniq.serialization import loads

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Sequence

    from soniq.backends.postgres.errors import Translator
    from soniq.backends.postgres.names import Names
    from soniq.types import NewJob

__all__ = ["PostgresWorkflowStore", "insert"]


class _Sql:
    """The statements of workflows for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        #: $1 id, $2 name, $3 kind.
        self.insert = (f"INSERT INTO {n.workflows} (id, name, kind) "
                       "VALUES ($1::uuid, $2::text, $3::text)")
        select = f"""
SELECT w.id::text, w.name, w.kind, w.created_at,
       (SELECT COALESCE(jsonb_object_agg(c.status, c.n), '{{}}')::text
        FROM (SELECT status, count(*) AS n FROM {n.jobs} WHERE workflow_id = w.id
              GROUP BY status) AS c) AS counts
FROM {n.workflows} AS w
"""
        #: $1 id.
        self.get = select + "WHERE w.id = $1::uuid"
        #: $1 before (NULL: from the newest), $2 limit.
        self.list = select + ("WHERE $1::uuid IS NULL OR w.id < $1::uuid "
                              "ORDER BY w.id DESC LIMIT $2")
        #: $1 id, $2 limit (NULL: all): the steps, each with its dependencies.
        self.steps = f"""
SELECT j.id::text, j.step_name, j.job_name, j.status, j.created_at, j.started_at, j.finished_at,
       ARRAY(SELECT d.dependency::text FROM {n.dependencies} AS d WHERE d.dependent = j.id
             ORDER BY d.dependency) AS depends_on
FROM {n.jobs} AS j WHERE j.workflow_id = $1::uuid ORDER BY j.id LIMIT $2::integer
"""


        #: $1 batch: the oldest workflow rows without a step left (steps are inserted with
        #: their workflow row, in its transaction, so none can appear after this reads).
        self.prune = f"""
DELETE FROM {n.workflows}
WHERE id = ANY (ARRAY(
    SELECT w.id FROM {n.workflows} AS w
    WHERE NOT EXISTS (SELECT 1 FROM {n.jobs} AS j WHERE j.workflow_id = w.id)
    ORDER BY w.id LIMIT $1::integer
    FOR UPDATE SKIP LOCKED))
"""


_sql = functools.cache(_Sql)


async def insert(on: Any, n: Names, workflow: tuple[str, str, str], jobs: Sequence[NewJob],
                 *, pooled: bool) -> list[str]:
    """Write ``workflow`` (id, name, kind) and its steps in one transaction: a connection of
    the pool ``on`` when ``pooled``, else the caller's connection ``on`` (joining its
    transaction if one is open). The steps go first: a refused one leaves nothing written."""
    if pooled:
        async with on.acquire() as conn, conn.transaction():
            return await _insert(conn, n, workflow, jobs)
    if on.is_in_transaction():
        return await _insert(on, n, workflow, jobs)
    async with on.transaction():
        return await _insert(on, n, workflow, jobs)


async def _insert(conn: Any, n: Names, workflow: tuple[str, str, str],
                  jobs: Sequence[NewJob]) -> list[str]:
    ids = await dependencies.insert(conn, dependencies.dependency_sql(n), jobs)
    await conn.execute(_sql(n).insert, *workflow)
    return ids


def _workflow(row: Any) -> StoredWorkflow:
    return StoredWorkflow(id=row["id"], name=row["name"], kind=row["kind"],
                          created_at=row["created_at"], counts=loads(row["counts"]))


class PostgresWorkflowStore:
    """Workflows in PostgreSQL (reached as ``PostgresBackend.workflows``); ``ready`` returns
    the backend's pool, ``errors`` is its translator, ``names`` says where the tables are;
    pruning runs under ``maintenance_timeout``."""

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator,
                 names: Names, maintenance_timeout: str) -> None:
        self._ready = ready
        self._maintenance_timeout = maintenance_timeout
        self._errors = errors
        self._sql = _sql(names)

    async def get(self, workflow_id: str) -> StoredWorkflow | None:
        if not is_uuid(workflow_id):
            return None
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, self._sql.get, workflow_id)
        return None if row is None else _workflow(row)

    async def steps(self, workflow_id: str, *,
                    limit: int | None = None) -> builtins.list[StoredStep]:
        if not is_uuid(workflow_id):
            return []
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.steps, workflow_id, limit)
        return [StoredStep(id=row["id"], step_name=row["step_name"], job_name=row["job_name"],
                           status=row["status"], depends_on=tuple(row["depends_on"]),
                           created_at=row["created_at"], started_at=row["started_at"],
                           finished_at=row["finished_at"]) for row in rows]

    async def prune(self) -> int:
        with self._errors:
            pool = await self._ready()
            return await call(prune_in_batches, pool, self._maintenance_timeout, self._sql.prune,
                              batch=PRUNE_BATCH_SIZE)

    async def list(self, *, before: str | None, limit: int) -> builtins.list[StoredWorkflow]:
        if before is not None and not is_uuid(before):
            return []
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._sql.list, before, limit)
        return [_workflow(row) for row in rows]
