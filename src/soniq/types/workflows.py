"""The shapes of workflows and batches (``app.workflows``), re-exported by :mod:`soniq.types`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeAlias, TypedDict

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["BATCH_ITEM", "WorkflowInfo", "WorkflowStatus", "WorkflowStep"]

#: The step names of a batch's jobs: ``#0``, ``#1``, ... (their place in ``args_list``). No other
#: step can be named so (names start with a letter or digit): a job whose dependencies are all
#: such steps is a batch's callback, and its ``ctx.dependency_results`` are the batch's counts.
BATCH_ITEM = "#"

#: Where a workflow is (``app.workflows``): ``done`` when every step is done; ``failed`` when a
#: step is dead-lettered and none can still run; ``cancelled`` when steps were cancelled, none
#: failed and none can still run; else ``running``.
WorkflowStatus: TypeAlias = Literal["running", "done", "failed", "cancelled"]


class WorkflowStep(TypedDict):
    """A step of a workflow or batch (``app.workflows.get``); ``depends_on`` names its
    dependencies by step name."""

    name: str | None
    job_id: str
    job_name: str
    status: str
    depends_on: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class WorkflowInfo(TypedDict):
    """A workflow or batch (``kind``) as ``app.workflows`` shows it: ``counts`` of its steps by
    status (every status, 0 included); ``steps`` (in enqueue order) is filled by ``get`` only
    (``list`` leaves it empty)."""

    id: str
    name: str
    kind: str
    status: WorkflowStatus
    created_at: datetime
    counts: dict[str, int]
    steps: list[WorkflowStep]
