"""``soniq jobs list|show|cancel|delete|retry`` and ``soniq inspect JOB_ID``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cyclopts import App, Parameter

from soniq.cli._common import Target, open_app, run
from soniq.cli._output import Column, print_fields, print_json, print_line, print_table

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from soniq.app import Soniq
    from soniq.types import JobRecord

__all__ = ["JOB_COLUMNS", "app", "apply_each", "inspect", "job_rows", "print_job"]

app = App(name="jobs", help="List, show, cancel, delete and retry jobs.")

#: The columns of every job listing (``jobs list``, ``dead-letter list``).
JOB_COLUMNS: list[Column] = [
    ("id", "id"), ("job_name", "job"), ("queue", "queue"), ("status", "status"),
    ("tries", "attempts"), ("priority", "priority"), ("scheduled_at", "scheduled (UTC)"),
    ("last_error", "last error"),
]

JobIds = Annotated[list[str], Parameter(name="JOB_ID")]
Status = Literal["waiting", "queued", "processing", "done", "dead_letter", "cancelled"]


def job_rows(records: list[JobRecord]) -> list[dict[str, Any]]:
    return [{**record, "tries": f"{record['attempts']}/{record['max_attempts']}"}
            for record in records]


@app.command(name="list")
def list_jobs(*, queue: str | None = None, status: Status | None = None, limit: int = 50,
              offset: int = 0, json: bool = False, target: Target = Target()) -> int:  # noqa: B008
    """List jobs, newest first.

    Parameters
    ----------
    queue
        Only jobs in this queue.
    status
        Only jobs in this state.
    limit
        At most this many jobs.
    offset
        Skip this many (for paging).
    json
        Print the full records as JSON.
    """
    soniq = open_app(target)
    records = run(soniq, lambda: soniq.list_jobs(queue=queue, status=status, limit=limit,
                                                 offset=offset))
    if json:
        print_json(records)
    else:
        print_table(job_rows(records), JOB_COLUMNS, empty="no jobs")
    return 0


@app.command
def show(job_id: Annotated[str, Parameter(name="JOB_ID")], /, *, json: bool = False,
         target: Target = Target()) -> int:  # noqa: B008
    """Show one job's record.

    Parameters
    ----------
    job_id
        The id enqueue returned.
    json
        Print the record as JSON.
    """
    soniq = open_app(target)
    record = run(soniq, lambda: soniq.get_job(job_id))
    if record is None:
        print_line(f"error: no job with id {job_id!r}", err=True)
        return 1
    if json:
        print_json(record)
    else:
        print_job(record)
    return 0


def inspect(job_id: Annotated[str, Parameter(name="JOB_ID")], /, *, json: bool = False,
            target: Target = Target()) -> int:  # noqa: B008
    """Everything about one job: its record, every failed attempt with its traceback, and the
    log lines captured while it ran.

    Parameters
    ----------
    job_id
        The id enqueue returned.
    json
        Print it all as one JSON object.
    """
    soniq = open_app(target)

    async def collect() -> tuple[JobRecord | None, list[dict[str, Any]]]:
        record = await soniq.get_job(job_id)
        if record is None:
            return None, []
        return record, [dataclasses.asdict(entry) for entry in await soniq.logs.for_job(job_id)]

    record, logs = run(soniq, collect)
    if record is None:
        print_line(f"error: no job with id {job_id!r}", err=True)
        return 1
    if json:
        print_json({**record, "logs": logs})
        return 0
    print_job(record)
    for error in record["errors"]:
        print_line("")
        print_line(f"attempt {error.get('attempt')} failed at {error.get('at')}: "
                   f"{error.get('type')}: {error.get('message')}", style="bold red")
        if error.get("traceback"):
            print_line(str(error["traceback"]).rstrip())
    if logs:
        print_line("")
        print_table(logs, [("created_at", "time (UTC)"), ("attempt", "attempt"), ("level", "level"),
                           ("logger", "logger"), ("message", "message")], title="Logs")
    return 0


def print_job(record: JobRecord) -> None:
    print_fields([
        ("id", record["id"]), ("job", record["job_name"]), ("queue", record["queue"]),
        ("status", record["status"]), ("priority", record["priority"]),
        ("attempts", f"{record['attempts']} of {record['max_attempts']}"),
        ("arguments", record["args"]), ("result", record["result"]),
        ("progress", record["progress"]), ("created", record["created_at"]), ("scheduled", record["scheduled_at"]),
        ("started", record["started_at"]), ("finished", record["finished_at"]),
        ("expires", record["expires_at"]), ("worker", record["worker_id"]),
        ("last error", record["last_error"]),
    ])


def apply_each(soniq: Soniq, job_ids: list[str], action: Callable[[str], Awaitable[str | None]],
               done: str) -> int:
    """Run ``action`` per id (it returns None on success or why it failed); exit 1 if any failed."""

    async def each() -> list[tuple[str, str | None]]:
        return [(job_id, await action(job_id)) for job_id in job_ids]

    failed = 0
    for job_id, problem in run(soniq, each):
        if problem is None:
            print_line(f"{done} {job_id}")
        else:
            failed += 1
            print_line(f"error: {job_id}: {problem}", err=True)
    return 1 if failed else 0


@app.command
def cancel(job_ids: JobIds, /, *, target: Target = Target()) -> int:  # noqa: B008
    """Cancel jobs that have not finished. A waiting job is cancelled at once ("cancelled
    <id>"); a running one gets a cancel request its worker honours unless the job finishes
    first ("cancel requested <id>").

    Parameters
    ----------
    job_ids
        One or more job ids.
    """
    soniq = open_app(target)

    async def each() -> list[tuple[str, str | None]]:
        return [(job_id, await soniq.request_cancel(job_id)) for job_id in job_ids]

    failed = 0
    for job_id, outcome in run(soniq, each):
        if outcome is None:
            failed += 1
            print_line(f"error: {job_id}: no such job, or already finished", err=True)
        else:
            print_line(f"{'cancelled' if outcome == 'cancelled' else 'cancel requested'} {job_id}")
    return 1 if failed else 0


@app.command
def delete(job_ids: JobIds, /, *, target: Target = Target()) -> int:  # noqa: B008
    """Delete jobs in any state.

    Parameters
    ----------
    job_ids
        One or more job ids.
    """
    soniq = open_app(target)

    async def one(job_id: str) -> str | None:
        return None if await soniq.delete_job(job_id) else "no such job"

    return apply_each(soniq, job_ids, one, "deleted")


@app.command
def retry(job_ids: JobIds, /, *, target: Target = Target()) -> int:  # noqa: B008
    """Queue dead-lettered jobs again (same id, attempts reset, error history kept).

    Parameters
    ----------
    job_ids
        One or more job ids.
    """
    soniq = open_app(target)

    async def one(job_id: str) -> str | None:
        if await soniq.dead_letter.replay(job_id):
            return None
        record = await soniq.get_job(job_id)
        if record is None:
            return "no such job"
        return f"the job is {record['status']}; only dead-lettered jobs can be retried"

    return apply_each(soniq, job_ids, one, "queued again")
