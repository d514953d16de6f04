"""``soniq workflows list|show|cancel``: workflows and batches (``app.workflows``)."""

from __future__ import annotations

from typing import Annotated, Literal

from cyclopts import App, Parameter

from soniq.cli._common import Target, open_app, run
from soniq.cli._output import print_fields, print_json, print_line, print_table

__all__ = ["app"]

app = App(name="workflows", help="List, show and cancel workflows and batches.")

WorkflowId = Annotated[str, Parameter(name="WORKFLOW_ID",
                                      help="The id wf.enqueue() or enqueue_batch() returned.")]
Json = Annotated[bool, Parameter(help="Print the outcome as JSON.")]
Status = Literal["running", "done", "failed", "cancelled"]


def _missing(workflow_id: str) -> int:
    print_line(f"error: no workflow with id {workflow_id!r}", err=True)
    return 1


@app.command(name="list")
def list_workflows(*, status: Status | None = None, limit: int = 100, json: Json = False,
                   target: Target = Target()) -> int:  # noqa: B008
    """List workflows and batches, newest first, with their status and step counts.

    Parameters
    ----------
    status
        Only those with this status.
    limit
        At most this many (1-1000).
    """
    soniq = open_app(target)
    found = run(soniq, lambda: soniq.workflows.list(status=status, limit=limit))
    if json:
        print_json(found)
        return 0
    rows = [{**w, "steps": sum(w["counts"].values()), "done": w["counts"]["done"]}
            for w in found]
    print_table(rows, [("id", "id"), ("name", "name"), ("kind", "kind"), ("status", "status"),
                       ("done", "done"), ("steps", "steps"), ("created_at", "created")],
                empty="no workflows")
    return 0


@app.command
def show(workflow_id: WorkflowId, /, *, json: Json = False,
         target: Target = Target()) -> int:  # noqa: B008
    """Show one workflow or batch: its status and every step with its dependencies."""
    soniq = open_app(target)
    info = run(soniq, lambda: soniq.workflows.get(workflow_id))
    if info is None:
        return _missing(workflow_id)
    if json:
        print_json(info)
        return 0
    print_fields([("id", info["id"]), ("name", info["name"]), ("kind", info["kind"]),
                  ("status", info["status"]), ("created", info["created_at"])])
    print_table([{**step, "depends_on": ", ".join(step["depends_on"])} for step in info["steps"]],
                [("name", "step"), ("status", "status"), ("job_name", "job"),
                 ("job_id", "job id"), ("depends_on", "after"), ("started_at", "started"),
                 ("finished_at", "finished")], empty="no steps (pruned)")
    return 0


@app.command
def cancel(workflow_id: WorkflowId, /, *, json: Json = False,
           target: Target = Target()) -> int:  # noqa: B008
    """Cancel every step not yet finished (a running step gets a cancel request)."""
    soniq = open_app(target)
    outcomes = run(soniq, lambda: soniq.workflows.cancel(workflow_id))
    if outcomes is None:
        return _missing(workflow_id)
    if json:
        print_json({"id": workflow_id, "steps": outcomes})
        return 0
    cancelled = sum(1 for outcome in outcomes.values() if outcome == "cancelled")
    print_line(f"cancelled {cancelled} step(s), requested cancellation of "
               f"{len(outcomes) - cancelled} running step(s) of workflow {workflow_id}")
    return 0
