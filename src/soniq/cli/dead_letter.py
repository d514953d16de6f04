"""``soniq dead-letter list|replay|delete|purge|export``: jobs that used up their retries."""

from __future__ import annotations

import os
import sys
from pathlib import Path  # noqa: TC003 -- cyclopts resolves annotations at runtime
from typing import TYPE_CHECKING, Annotated

from cyclopts import App, Parameter

from soniq.cli._common import Target, UsageError, open_app, parse_duration, parse_when, run
from soniq.cli._output import print_json, print_line, print_table
from soniq.cli.jobs import JOB_COLUMNS, apply_each, job_rows

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["app"]

app = App(name="dead-letter", help="Inspect, replay and remove jobs that used up their retries.")

JobIds = Annotated[list[str], Parameter(name="JOB_ID")]


def _since(since: str | None) -> datetime | None:
    return None if since is None else parse_when(since, "--since", past=True)


@app.command(name="list")
def list_dead(*, queue: str | None = None, job_name: str | None = None, since: str | None = None,
              limit: int = 50, json: bool = False, target: Target = Target()) -> int:  # noqa: B008
    """List dead-lettered jobs, newest first.

    Parameters
    ----------
    queue
        Only this queue.
    job_name
        Only jobs of this name.
    since
        Only jobs dead-lettered after this: an ISO 8601 time or a duration ago (2h, 7d).
    limit
        At most this many.
    json
        Print the full records as JSON.
    """
    soniq = open_app(target)
    records = run(soniq, lambda: soniq.dead_letter.list_jobs(
        queue=queue, job_name=job_name, since=_since(since), limit=limit))
    if json:
        print_json(records)
    else:
        print_table(job_rows(records), JOB_COLUMNS, empty="no dead-lettered jobs")
    return 0


@app.command
def replay(job_ids: JobIds | None = None, /, *, all: bool = False, queue: str | None = None,
           job_name: str | None = None, since: str | None = None, limit: int | None = None,
           target: Target = Target()) -> int:  # noqa: B008
    """Queue dead-lettered jobs again: the ids given, or every match with --all.

    Parameters
    ----------
    job_ids
        Jobs to replay.
    all
        Replay every dead-lettered job matching --queue/--job-name/--since (at most --limit).
    queue
        With --all: only this queue.
    job_name
        With --all: only jobs of this name.
    since
        With --all: only jobs dead-lettered after this (ISO 8601 or a duration ago).
    limit
        With --all: at most this many, newest first.
    """
    if bool(job_ids) == all:
        raise UsageError("give JOB_IDs to replay, or --all (with optional filters), not both")
    soniq = open_app(target)
    if job_ids:

        async def one(job_id: str) -> str | None:
            return None if await soniq.dead_letter.replay(job_id) else "not a dead-lettered job"

        return apply_each(soniq, job_ids, one, "queued again")
    count = run(soniq, lambda: soniq.dead_letter.replay_many(
        queue=queue, job_name=job_name, since=_since(since), limit=limit))
    print_line(f"queued {count} dead-lettered job(s) again")
    return 0


@app.command
def delete(job_ids: JobIds, /, *, target: Target = Target()) -> int:  # noqa: B008
    """Delete dead-lettered jobs.

    Parameters
    ----------
    job_ids
        One or more job ids.
    """
    soniq = open_app(target)

    async def one(job_id: str) -> str | None:
        return None if await soniq.dead_letter.delete(job_id) else "not a dead-lettered job"

    return apply_each(soniq, job_ids, one, "deleted")


@app.command
def purge(*, older_than: str | None = None, all: bool = False,
          target: Target = Target()) -> int:  # noqa: B008
    """Delete dead-lettered jobs older than --older-than, or all of them with --all.

    Parameters
    ----------
    older_than
        Age such as 30d or 12h (by when they were dead-lettered).
    all
        Delete every dead-lettered job.
    """
    if (older_than is None) == (not all):
        raise UsageError("give --older-than DURATION (e.g. 30d) or --all, not both")
    age = None if older_than is None else parse_duration(older_than, "--older-than")
    soniq = open_app(target)
    count = run(soniq, lambda: soniq.dead_letter.purge(older_than=age))
    print_line(f"deleted {count} dead-lettered job(s)")
    return 0


@app.command
def export(*, output: Path | None = None, queue: str | None = None, job_name: str | None = None,
           since: str | None = None, limit: int | None = None,
           target: Target = Target()) -> int:  # noqa: B008
    """Write dead-lettered jobs as JSON lines (one object per job, newest first).

    Parameters
    ----------
    output
        File to write (replaced atomically). Default: standard output.
    queue
        Only this queue.
    job_name
        Only jobs of this name.
    since
        Only jobs dead-lettered after this (ISO 8601 or a duration ago).
    limit
        At most this many.
    """
    soniq = open_app(target)
    partial = None if output is None else output.with_name(f".{output.name}.partial")

    async def write() -> int:
        count = 0
        stream = sys.stdout if partial is None else partial.open("w", encoding="utf-8")
        try:
            async for line in soniq.dead_letter.export(queue=queue, job_name=job_name,
                                                       since=_since(since), limit=limit):
                stream.write(line + "\n")
                count += 1
        finally:
            if stream is not sys.stdout:
                stream.close()
        return count

    try:
        count = run(soniq, write)
    except BaseException:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise
    if partial is not None and output is not None:
        os.replace(partial, output)
        print_line(f"exported {count} dead-lettered job(s) to {output}", err=True)
    return 0
