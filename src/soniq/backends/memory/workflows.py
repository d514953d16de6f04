"""Workflows of the memory backend (:class:`~soniq.backends.stores.WorkflowStore`): the
workflow rows, over the backend's job rows (their ``workflow_id``) and its dependency edges."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from soniq.backends.stores import StoredStep, StoredWorkflow
from soniq.serialization import utc_now

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable
    from datetime import datetime

__all__ = ["MemoryWorkflowStore"]


class MemoryWorkflowStore:
    """``rows``: the backend's jobs (id -> row dict); ``dependencies_of(id)``: a job's
    dependency ids, in the order given."""

    def __init__(self, rows: dict[str, dict[str, Any]],
                 dependencies_of: Callable[[str], tuple[str, ...]]) -> None:
        self._rows = rows
        self._dependencies_of = dependencies_of
        self._workflows: dict[str, tuple[str, str, datetime]] = {}

    def add(self, workflow_id: str, name: str, kind: str) -> None:
        """Store the workflow row (its steps are already among the rows)."""
        self._workflows[workflow_id] = (name, kind, utc_now())

    def _stored(self, workflow_id: str, counts: Counter[str]) -> StoredWorkflow:
        name, kind, created_at = self._workflows[workflow_id]
        return StoredWorkflow(id=workflow_id, name=name, kind=kind, created_at=created_at,
                              counts=dict(counts))

    async def get(self, workflow_id: str) -> StoredWorkflow | None:
        if workflow_id not in self._workflows:
            return None
        return self._stored(workflow_id, Counter(
            row["status"] for row in self._rows.values() if row["workflow_id"] == workflow_id))

    async def steps(self, workflow_id: str, *,
                    limit: int | None = None) -> builtins.list[StoredStep]:
        found = sorted((row for row in self._rows.values() if row["workflow_id"] == workflow_id),
                       key=lambda row: str(row["id"]))[:limit]
        return [StoredStep(id=row["id"], step_name=row["step_name"], job_name=row["job_name"],
                           status=row["status"],
                           depends_on=tuple(sorted(self._dependencies_of(row["id"]))),
                           created_at=row["created_at"], started_at=row["started_at"],
                           finished_at=row["finished_at"]) for row in found]

    async def prune(self) -> int:
        alive = {row["workflow_id"] for row in self._rows.values()}
        empty = [w for w in self._workflows if w not in alive]
        for workflow_id in empty:
            del self._workflows[workflow_id]
        return len(empty)

    async def list(self, *, before: str | None, limit: int) -> builtins.list[StoredWorkflow]:
        ids = sorted((w for w in self._workflows if before is None or w < before),
                     reverse=True)[:limit]
        counts: dict[str, Counter[str]] = {w: Counter() for w in ids}
        for row in self._rows.values():
            if row["workflow_id"] in counts:
                counts[row["workflow_id"]][row["status"]] += 1
        return [self._stored(w, counts[w]) for w in ids]
