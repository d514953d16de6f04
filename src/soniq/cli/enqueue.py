"""``soniq enqueue module:function --args '{"k": 1}'``: add one job from the shell."""

from __future__ import annotations

import json as jsonlib
import os
from typing import TYPE_CHECKING, Annotated, Any

from cyclopts import Parameter

from soniq.app import Soniq
from soniq.cli._common import (
    GLOBALS,
    Target,
    UsageError,
    import_attribute,
    open_app,
    parse_when,
    run,
)
from soniq.cli._output import print_json, print_line

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["enqueue"]


def enqueue(job: Annotated[str, Parameter(name="JOB")], /, *, args: str = "{}",
            queue: str | None = None, priority: int | None = None, at: str | None = None,
            json: bool = False, target: Target = Target()) -> int:  # noqa: B008
    """Add one job and print its id.

    Parameters
    ----------
    job
        The job function as module:function (registered with @app.job() on a Soniq instance in
        that module, or on --app), or a job name: with --app it must be registered there;
        without, it is enqueued unchecked for whichever worker knows it, with the queue,
        priority and max attempts its workers stored (see soniq status).
    args
        The job's keyword arguments as a JSON object, e.g. '{"user_id": 1}'.
    queue
        Queue to put it in. Default: the job's own.
    priority
        Lower runs first. Default: the job's, else SONIQ_PRIORITY.
    at
        When to run it: an ISO 8601 time (2030-01-31T09:00:00+01:00; no offset means UTC) or a
        duration from now (30s, 15m, 2h). Default: now.
    json
        Print {"id": ...} as JSON.
    """
    arguments = _parse_args(args)
    scheduled_at = None if at is None else parse_when(at, "--at", past=False)
    soniq, job_target = _resolve(job, target)
    job_id = run(soniq, lambda: soniq.enqueue(job_target, args=arguments, queue=queue,
                                              priority=priority, scheduled_at=scheduled_at))
    if json:
        print_json({"id": job_id})
    else:
        print_line(job_id)
    return 0


def _parse_args(text: str) -> dict[str, Any]:
    try:
        value = jsonlib.loads(text)
    except ValueError as exc:
        raise UsageError(f"--args is not valid JSON ({exc}); pass an object such as "
                         "'{\"user_id\": 1}'") from None
    except RecursionError:
        raise UsageError("--args is nested too deeply to read; pass a flatter JSON object") from None
    if not isinstance(value, dict):
        raise UsageError(f"--args must be a JSON object of keyword arguments such as "
                         f"'{{\"user_id\": 1}}', got a {type(value).__name__}")
    return value


def _resolve(job: str, target: Target) -> tuple[Soniq, Callable[..., Any] | str]:
    """The app to enqueue with and what to pass it (the function, or the job name)."""
    named_app = target.app or GLOBALS.app
    if ":" not in job:
        if named_app is not None:
            return open_app(target, require_app=True), job
        return open_app(target, enqueue_validation="none"), job
    url = target.database_url or GLOBALS.database_url
    if url is not None:
        os.environ["SONIQ_DATABASE_URL"] = url  # a module-level Soniq() reads it on import
    module, function = import_attribute(job, "JOB")
    if not callable(function):
        raise UsageError(f"{job} is a {type(function).__name__}, not a job function")
    if named_app is not None:
        return open_app(target, require_app=True), function
    owners = [value for value in vars(module).values()
              if isinstance(value, Soniq) and value.registry.spec_for(function) is not None]
    if len(owners) != 1:
        raise UsageError(f"{job} is not registered with @app.job() on exactly one Soniq instance "
                         "in its module; name the app with --app module:attribute")
    if url is not None and owners[0].settings.database_url != url:
        raise UsageError("--database-url cannot override the app: its code passes its own "
                         "database_url; remove it there or drop the flag")
    return owners[0], function
