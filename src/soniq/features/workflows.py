"""Workflows and batches: jobs that wait for other jobs, enqueued together and watched as one.

Building: ``wf = app.workflow("nightly-report")``; ``wf.add(target, args=..., after=[...])``
returns a :class:`Step` (the handle ``after=`` takes, as does the step's name); ``await
wf.enqueue()`` checks the graph (:meth:`WorkflowBuilder.plan`), builds every step exactly as
``enqueue`` builds a job (the producer's path, ``unique`` off: a step is never deduplicated
away from its graph), turns the ``after`` names into ``depends_on`` ids
(:func:`workflow_jobs`) and writes the workflow row and its steps in one transaction
(``StorageBackend.insert_workflow``). A batch (``app.enqueue_batch``) is the same: its jobs are
the steps ``#0``, ``#1``, ... (:data:`~soniq.types.BATCH_ITEM`) and its callback the step
``on_complete``, which depends on all of them under ``on_dependency_failure="run"``
(:func:`batch_jobs`); the worker recognises a callback by its dependencies' step names and
gives it the batch's counts as ``ctx.dependency_results``.

Watching and steering: ``app.workflows`` (:class:`Workflows`) reads ``backend.workflows``
(:class:`~soniq.backends.stores.WorkflowStore`) and decides each workflow's status from the
counts of its steps (:func:`workflow_status`); ``cancel`` cancels the unfinished steps one by one
through the ordinary cancel path, dependents first (so no ``"run"`` step is released by the
cancel of its dependency).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any

from soniq.backends.base import STATUSES
from soniq.backends.dependencies import ordered
from soniq.backends.stores import WebhookMessage
from soniq.errors import JobArgumentsError, UnsupportedOperationError, ValidationError
from soniq.registry import validate_name
from soniq.runtime import cancel_job
from soniq.serialization import utc_now
from soniq.types import (
    BATCH_ITEM,
    DEPENDENCY_FAILURES,
    JobStatus,
    NewJob,
    WorkflowInfo,
    WorkflowStep,
)

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable

    from soniq.backends.base import StorageBackend
    from soniq.backends.stores import StoredStep, StoredWorkflow, WorkflowStore
    from soniq.runtime import EventDispatcher
    from soniq.types import CancelOutcome, DependencyFailure, WorkflowStatus

__all__ = ["CALLBACK_STEP", "WORKFLOW_EVENTS", "WORKFLOW_STATUSES", "Step", "Workflow",
           "WorkflowBuilder", "Workflows", "batch_jobs", "workflow_event", "workflow_jobs",
           "workflow_name", "workflow_status"]

#: The step name of a batch's callback.
CALLBACK_STEP = "on_complete"
WORKFLOW_STATUSES: tuple[WorkflowStatus, ...] = ("running", "done", "failed", "cancelled")
#: The webhook events of workflows: one per final status.
WORKFLOW_EVENTS = ("workflow.done", "workflow.failed", "workflow.cancelled")
_UNFINISHED = frozenset({JobStatus.WAITING, JobStatus.QUEUED, JobStatus.PROCESSING})
_MAX_NAME = 200
_MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Step:
    """A step of a workflow, as :meth:`WorkflowBuilder.add` returns it: pass it (or its
    ``name``) to a later step's ``after=``. ``after`` holds the names it runs after."""

    name: str
    target: Any
    args: Mapping[str, Any]
    after: tuple[str, ...]
    queue: str | None
    priority: int | None
    scheduled_at: Any
    on_dependency_failure: DependencyFailure
    workflow: WorkflowBuilder = field(compare=False, repr=False)


class WorkflowBuilder:
    """The steps of a workflow and their order, checked (no I/O). ``job_name(target)`` names
    the job of a target (the registry's resolution)."""

    def __init__(self, name: str, job_name: Callable[[Any], str]) -> None:
        self.name = workflow_name(name)
        self._job_name = job_name
        self._steps: dict[str, Step] = {}
        self._last: dict[str, int] = {}  # per default name, the last number given

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} steps={list(self._steps)}>"

    @property
    def steps(self) -> builtins.list[Step]:
        """The steps, in the order they were added."""
        return list(self._steps.values())

    def add(self, target: Any, *, args: Mapping[str, Any] | None = None,
            name: str | None = None, after: Sequence[Step | str] | Step | str = (),
            queue: str | None = None, priority: int | None = None, scheduled_at: Any = None,
            on_dependency_failure: DependencyFailure = "cancel") -> Step:
        """Add a step running ``target`` (a registered function, a job name or a TaskRef) with
        the job arguments ``args``, after the steps ``after`` (handles, or names of steps added
        before or later). ``name`` defaults to the job's name, made unique in the workflow
        (``transform``, ``transform-2``, ...). ``queue``, ``priority`` and ``scheduled_at``
        are ``enqueue``'s; ``on_dependency_failure`` (``cancel``, ``run``, ``wait``) says what
        a dependency ending ``dead_letter`` or ``cancelled`` does to this step.

        Raises:
            ValidationError: a name already used or not a valid name, a handle of another
                workflow, arguments that are not a dict, an unknown failure policy.
        """
        if args is None:
            args = {}
        elif not isinstance(args, Mapping):
            raise JobArgumentsError(f"args must be a dict of the job's arguments, got {args!r}")
        if on_dependency_failure not in DEPENDENCY_FAILURES:
            raise ValidationError(f"on_dependency_failure must be one of "
                                  f"{', '.join(DEPENDENCY_FAILURES)}, got {on_dependency_failure!r}")
        if name is None:
            name = self._unique(self._job_name(target))
        elif validate_name(name, "step name") in self._steps:
            raise ValidationError(f"workflow {self.name!r} already has a step named {name!r}")
        names = []
        for item in (after,) if isinstance(after, Step | str) else after:
            if isinstance(item, Step):
                if item.workflow is not self:
                    raise ValidationError(f"step {item.name!r} belongs to workflow "
                                          f"{item.workflow.name!r}, not to {self.name!r}")
                names.append(item.name)
            elif isinstance(item, str):
                names.append(item)
            else:
                raise ValidationError(f"after= takes steps or step names, got {item!r}")
        step = Step(name, target, dict(args), tuple(dict.fromkeys(names)), queue, priority,
                    scheduled_at, on_dependency_failure, workflow=self)
        self._steps[name] = step
        return step

    def _unique(self, base: str) -> str:
        """``base``, else ``base-2``, ``base-3``, ... -- counting on from the last one given
        for ``base`` (so 10,000 steps of one job are named in linear time)."""
        name, n = base, self._last.get(base, 1)
        while name in self._steps:
            n += 1
            name = f"{base}-{n}"
        self._last[base] = n
        return name

    def plan(self) -> builtins.list[Step]:
        """The steps, checked as a whole: at least one, every ``after`` name a step, no cycle.

        Raises:
            ValidationError: naming what is wrong.
        """
        if not self._steps:
            raise ValidationError(f"workflow {self.name!r} has no steps; add them with add()")
        for step in self._steps.values():
            unknown = [d for d in step.after if d not in self._steps]
            if unknown:
                raise ValidationError(f"step {step.name!r} runs after {', '.join(unknown)}, "
                                      f"which workflow {self.name!r} has no step named")
        try:
            ordered({s.name: s.after for s in self._steps.values()})
        except CycleError as exc:
            raise ValidationError(f"the steps of workflow {self.name!r} wait for each other in "
                                  f"a cycle: {' -> '.join(exc.args[1])}") from None
        return self.steps


class Workflow(WorkflowBuilder):
    """``app.workflow(name)``: add steps, then ``await wf.enqueue()``. ``submit`` is the app's
    (it builds and writes the steps); a workflow can be enqueued more than once, each time as a
    new workflow."""

    def __init__(self, name: str, job_name: Callable[[Any], str],
                 submit: Callable[[Workflow, Any], Awaitable[str]]) -> None:
        super().__init__(name, job_name)
        self._submit = submit

    async def enqueue(self, connection: Any = None) -> str:
        """Write every step in one transaction (``connection=``: the caller's, PostgreSQL) and
        return the workflow's id. Nothing is written when a step or the graph is invalid.

        Raises:
            ValidationError: the graph or a step's job is invalid (see :meth:`plan`).
        """
        return await self._submit(self, connection)


def workflow_name(name: object) -> str:
    """``name`` if it can name a workflow or batch: non-empty text, at most 200 characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME or "\0" in name:
        raise ValidationError(f"a workflow name must be non-empty text of at most {_MAX_NAME} "
                              f"characters, got {name!r}")
    return name


#: A step's fields that its job keeps: ``NewJob``'s up to ``unique``; the rest are the step's.
_OWN_FIELDS = NewJob._fields.index("depends_on")


def workflow_jobs(workflow_id: str, steps: Sequence[Step],
                  jobs: Sequence[NewJob]) -> list[NewJob]:
    """The rows of ``steps`` (``jobs``: each step's job as ``enqueue`` builds it, in order):
    every one a step of ``workflow_id``, depending on the ids of its ``after`` steps."""
    ids = {step.name: job.id for step, job in zip(steps, jobs, strict=True)}
    # From a tuple, the job's own fields up to unique kept: _replace costs 5x as much (a
    # workflow can have 10,000 steps).
    return [NewJob._make((*job[:_OWN_FIELDS], tuple(ids[name] for name in step.after),
                          step.on_dependency_failure, workflow_id, step.name))
            for step, job in zip(steps, jobs, strict=True)]


def batch_jobs(workflow_id: str, jobs: Sequence[NewJob], callback: NewJob) -> list[NewJob]:
    """The rows of a batch: ``jobs`` as the steps ``#0``, ``#1``, ... and ``callback`` as the
    step ``on_complete``, depending on all of them under ``"run"`` (it runs once they all
    finished, whatever their outcome). Like a workflow's steps, they are never deduplicated (a
    unique job's key is dropped)."""
    if not jobs:
        raise ValidationError("a batch needs at least one job (args_list is empty)")
    items = [job._replace(workflow_id=workflow_id, step_name=f"{BATCH_ITEM}{i}", dedup_key=None,
                          unique=None)
             for i, job in enumerate(jobs)]
    return [*items, callback._replace(workflow_id=workflow_id, step_name=CALLBACK_STEP,
                                      depends_on=tuple(job.id for job in items),
                                      on_dependency_failure="run")]


def workflow_status(counts: Mapping[str, int]) -> WorkflowStatus:
    """``running`` while a step is queued or running (or waits for nothing that failed);
    ``done`` when every step is done; else ``failed`` with a dead-lettered step (none can run
    any more: the rest wait for a failed step under ``"wait"``), else ``cancelled``."""
    if counts.get("queued") or counts.get("processing"):
        return "running"
    if counts.get("dead_letter"):
        return "failed"
    if counts.get("cancelled"):
        return "cancelled"
    return "running" if counts.get("waiting") else "done"


def _info(found: StoredWorkflow, steps: Sequence[StoredStep]) -> WorkflowInfo:
    counts = {status: int(found.counts.get(status) or 0) for status in STATUSES}
    names = {step.id: step.step_name or step.id for step in steps}
    return WorkflowInfo(
        id=found.id, name=found.name, kind=found.kind, status=workflow_status(counts),
        created_at=found.created_at, counts=counts,
        steps=[WorkflowStep(name=step.step_name, job_id=step.id, job_name=step.job_name,
                            status=step.status, depends_on=[names.get(d, d) for d in step.depends_on],
                            created_at=step.created_at, started_at=step.started_at,
                            finished_at=step.finished_at) for step in steps])


def workflow_event(found: StoredWorkflow) -> WebhookMessage | None:
    """The webhook event of ``found`` when its status is final (``workflow.done``,
    ``workflow.failed``, ``workflow.cancelled``), with the payload ``{workflow_id, name, kind,
    status, counts}``; None while it is running."""
    info = _info(found, ())
    if info["status"] == "running":
        return None
    return WebhookMessage(f"workflow.{info['status']}", {
        "workflow_id": info["id"], "name": info["name"], "kind": info["kind"],
        "status": info["status"], "counts": info["counts"]}, utc_now())


class Workflows:
    """``app.workflows``: read and cancel workflows and batches. Touching it opens nothing;
    each call initialises the app first."""

    def __init__(self, backend: StorageBackend, events: EventDispatcher, *,
                 ready: Callable[[], Awaitable[None]]) -> None:
        self._backend = backend
        self._events = events
        self._ready = ready

    def __repr__(self) -> str:
        return f"<Workflows backend={self._backend.name}>"

    async def _store(self) -> WorkflowStore:
        store = self._backend.workflows
        if store is None:
            raise UnsupportedOperationError(
                f"the {self._backend.name} backend stores no workflows (backend.workflows); "
                "use the memory, sqlite or postgres backend, or implement WorkflowStore")
        await self._ready()
        return store

    async def get(self, workflow_id: str, *,
                  max_steps: int | None = None) -> WorkflowInfo | None:
        """The workflow (or batch) with its status and steps (only the first ``max_steps``,
        in enqueue order, when given: ``counts`` still counts them all); None when there is
        none."""
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(
                max_steps, int) or max_steps < 0):
            raise ValidationError(f"max_steps must be a non-negative integer, got {max_steps!r}")
        store = await self._store()
        found = await store.get(workflow_id)
        if found is None:
            return None
        return _info(found, await store.steps(workflow_id, limit=max_steps))

    async def list(self, status: WorkflowStatus | None = None, limit: int = 100, *,
                   before: str | None = None) -> builtins.list[WorkflowInfo]:
        """Workflows and batches newest first (``steps`` left empty), only those with
        ``status`` when given (the rest are read past, a page at a time); only those older
        than the workflow ``before`` when given (the cursor: the last id of a page)."""
        if status is not None and status not in WORKFLOW_STATUSES:
            raise ValidationError(f"status must be one of {', '.join(WORKFLOW_STATUSES)}, "
                                  f"got {status!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIMIT:
            raise ValidationError(f"limit must be an integer from 1 to {_MAX_LIMIT}, "
                                  f"got {limit!r}")
        store = await self._store()
        found: builtins.list[WorkflowInfo] = []
        page_size = limit if status is None else max(limit, 100)
        while len(found) < limit:
            page = await store.list(before=before, limit=page_size)
            found += [info for info in (_info(w, ()) for w in page)
                      if status is None or info["status"] == status]
            if len(page) < page_size:
                break
            before = page[-1].id
        return found[:limit]

    async def cancel(self, workflow_id: str) -> dict[str, CancelOutcome] | None:
        """Cancel every step not yet finished, dependents first: a waiting or queued step is
        cancelled, a running one gets the cancel request a running job gets
        (``request_cancel``). Returns what happened per step name (steps already finished are
        left out); None when there is no such workflow."""
        info = await self.get(workflow_id)
        if info is None:
            return None
        steps = {step["job_id"]: step for step in info["steps"]}
        by_name = {step["name"] or step["job_id"]: step["job_id"] for step in steps.values()}
        order = TopologicalSorter({job_id: [by_name.get(d, d) for d in step["depends_on"]]
                                   for job_id, step in steps.items()}).static_order()
        outcomes: dict[str, CancelOutcome] = {}
        for job_id in reversed(list(order)):
            step = steps.get(job_id)
            if step is None or step["status"] not in _UNFINISHED:
                continue
            outcome = await cancel_job(self._backend, self._events, job_id,
                                       step_ended=False)  # announced below, once
            if outcome is not None:
                outcomes[step["name"] or job_id] = outcome
        if outcomes:
            await self._announce(workflow_id)
        return outcomes

    async def _announce(self, workflow_id: str) -> None:
        """The workflow's webhook event when this cancel made it final (no worker may be
        running here to report it; a step still running reports when its worker stops it)."""
        webhooks = self._backend.webhooks
        store = self._backend.workflows
        found = None if webhooks is None or store is None else await store.get(workflow_id)
        event = None if found is None else workflow_event(found)
        if webhooks is not None and event is not None:
            await webhooks.add_messages([event])
