"""``soniq schedules list|pause|resume|remove``: the recurring jobs stored in the database."""

from __future__ import annotations

from typing import Annotated

from cyclopts import App, Parameter

from soniq.cli._common import AppPath, Target, app_spec, open_app, run
from soniq.cli._output import print_json, print_line, print_table

__all__ = ["app"]

app = App(name="schedules", help="List, pause, resume and remove recurring jobs.")

Name = Annotated[str, Parameter(name="NAME")]


@app.command(name="list")
def list_schedules(app_path: AppPath = None, /, *, json: bool = False,
                   target: Target = Target()) -> int:  # noqa: B008
    """List every schedule, by name. Given your app, schedules whose job it does not register
    are marked "unknown job": its workers leave them to workers that register the job (another
    service's schedule, or a renamed job).

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute (optional; default: SONIQ_APP). Without it,
        schedules are not checked against registered jobs (``job_known`` is null).
    json
        Print the schedules as JSON.
    """
    checked = app_spec(target, app_path) is not None
    soniq = open_app(target, app_path=app_path)
    schedules = [{**s, "job_known": s["job_known"] if checked else None}
                 for s in run(soniq, soniq.scheduler.list)]
    if json:
        print_json(schedules)
        return 0
    rows = [{**s, "when": s["cron"] or f"every {s['every']:g}s",
             "state": "paused" if s["paused"] else "active",
             "job": s["job_name"] if s["job_known"] is not False
             else f"{s['job_name']} (unknown job)"} for s in schedules]
    print_table(rows, [("name", "name"), ("job", "job"), ("when", "when"),
                       ("timezone", "timezone"), ("state", "state"),
                       ("next_run_at", "next run (UTC)"), ("last_run_at", "last run (UTC)")],
                empty="no schedules")
    return 0


def _change(target: Target, name: str, verb: str) -> int:
    soniq = open_app(target)
    method = {"paused": soniq.scheduler.pause, "resumed": soniq.scheduler.resume,
              "removed": soniq.scheduler.remove}[verb]
    if run(soniq, lambda: method(name)):
        print_line(f"{verb} schedule {name}")
        return 0
    print_line(f"error: no schedule named {name!r} (see: soniq schedules list)", err=True)
    return 1


@app.command
def pause(name: Name, /, *, target: Target = Target()) -> int:  # noqa: B008
    """Stop a schedule from firing (every worker sees it on its next tick).

    Parameters
    ----------
    name
        The schedule's name.
    """
    return _change(target, name, "paused")


@app.command
def resume(name: Name, /, *, target: Target = Target()) -> int:  # noqa: B008
    """Let a paused schedule fire again.

    Parameters
    ----------
    name
        The schedule's name.
    """
    return _change(target, name, "resumed")


@app.command
def remove(name: Name, /, *, target: Target = Target()) -> int:  # noqa: B008
    """Delete a schedule (jobs it already enqueued stay). One declared with @app.periodic comes
    back when a worker starts: pause it instead, or remove the decorator.

    Parameters
    ----------
    name
        The schedule's name.
    """
    return _change(target, name, "removed")
