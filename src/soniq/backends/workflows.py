"""The store protocol of workflows and batches, offered by a backend as ``backend.workflows``
(re-exported by :mod:`soniq.backends.stores`, where the other store protocols live).

A workflow is a row (``soniq_workflows``: id, name, kind, created_at) written with its steps in
one transaction by :meth:`~soniq.backends.base.StorageBackend.insert_workflow`; its steps are
the jobs carrying its id (``workflow_id``), and their dependencies are the edges of
``insert_jobs``. The store reads them back; steering a workflow (cancel) goes through the
ordinary per-job paths, and what a workflow's status is, is decided by
:mod:`soniq.features.workflows` from the counts read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import builtins
    from collections.abc import Mapping
    from datetime import datetime

__all__ = ["StoredStep", "StoredWorkflow", "WorkflowStore"]


@dataclass(frozen=True, slots=True)
class StoredWorkflow:
    """A workflow row with the number of its stored steps per status (statuses without steps
    may be missing)."""

    id: str
    name: str
    kind: str
    created_at: datetime
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class StoredStep:
    """A step of a workflow: its job, with its dependencies' job ids (in id order)."""

    id: str
    step_name: str | None
    job_name: str
    status: str
    depends_on: tuple[str, ...]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@runtime_checkable
class WorkflowStore(Protocol):
    """Reads of workflows and batches (``soniq_workflows`` and the jobs that are their steps)."""

    async def get(self, workflow_id: str) -> StoredWorkflow | None:
        """The workflow with its counts; None when there is none (or the id is malformed)."""
        ...

    async def steps(self, workflow_id: str, *,
                    limit: int | None = None) -> builtins.list[StoredStep]:
        """Its stored steps in id (enqueue) order, the first ``limit`` when given; [] when
        there are none."""
        ...

    async def list(self, *, before: str | None, limit: int) -> builtins.list[StoredWorkflow]:
        """Up to ``limit`` workflows newest first (by id, which is time-ordered), only those
        with ``id < before`` when given (the cursor: the last id of the previous page)."""
        ...

    async def prune(self) -> int:
        """Delete the workflow rows that have no step left (their steps were pruned with
        ``result_ttl``, or deleted), oldest first, in batches; how many."""
        ...
