"""``soniq queues list|pause|resume|limit|rate``: queue settings stored in the database.

Every change is recorded in the audit log as ``cli:<user>@<host>`` (the dashboard shows it).
"""

from __future__ import annotations

import dataclasses
import getpass
import socket
from typing import TYPE_CHECKING, Annotated, Any

from cyclopts import App, Parameter

from soniq.cli._common import Target, UsageError, open_app, run
from soniq.cli._output import print_json, print_line, print_table

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from soniq.features.queues import Queues

__all__ = ["app"]

app = App(name="queues", help="List, pause, resume and limit queues.")

Name = Annotated[str, Parameter(name="NAME", help="The queue's name.")]
Json = Annotated[bool, Parameter(help="Print the outcome as JSON.")]
Clear = Annotated[bool, Parameter(help="Clear the setting.")]
Limit = Annotated[str | None, Parameter(name="N",
                                        help="The limit (an integer >= 1), or off to clear it.")]
RateLimit = Annotated[str | None, Parameter(
    name="RATE", help="A rate: 20/s, 600/m or 1000/h; or off to clear it.")]
#: Words that clear a limit.
_OFF = ("off", "none")


def actor() -> str:
    """Who the audit log records for this command: ``cli:<user>@<host>``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the password database
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"[:200]


@app.command(name="list")
def list_queues(*, json: bool = False, target: Target = Target()) -> int:  # noqa: B008
    """List every known queue (with jobs or a stored setting): paused, limits, job counts.

    Parameters
    ----------
    json
        Print the queues as JSON.
    """
    soniq = open_app(target)
    queues = [dataclasses.asdict(q) for q in run(soniq, soniq.queues.list)]
    if json:
        print_json(queues)
        return 0
    rows = [{**q, "state": "paused" if q["paused"] else "active"} for q in queues]
    print_table(rows, [("name", "queue"), ("state", "state"),
                       ("concurrency_limit", "concurrency limit"), ("rate_limit", "rate limit"),
                       ("waiting", "waiting"), ("queued", "queued"), ("processing", "processing"), ("done", "done"),
                       ("dead_letter", "dead letter"), ("cancelled", "cancelled")],
                empty="no queues")
    return 0


def _change(target: Target, json: bool, name: str, call: Callable[[Queues], Awaitable[bool]],
            result: dict[str, Any], done: str, same: str) -> int:
    soniq = open_app(target)
    changed = run(soniq, lambda: call(soniq.queues))
    if json:
        print_json({"name": name, **result, "changed": changed})
    else:
        print_line(f"{done if changed else same} queue {name}")
    return 0


@app.command
def pause(name: Name, /, *, json: Json = False, target: Target = Target()) -> int:  # noqa: B008
    """Stop every worker from claiming the queue's jobs (running jobs finish; enqueueing still
    works). A queue with no jobs yet can be paused."""
    return _change(target, json, name, lambda q: q.pause(name, actor=actor()),
                   {"paused": True}, "paused", "already paused:")


@app.command
def resume(name: Name, /, *, json: Json = False, target: Target = Target()) -> int:  # noqa: B008
    """Let workers claim the queue's jobs again."""
    return _change(target, json, name, lambda q: q.resume(name, actor=actor()),
                   {"paused": False}, "resumed", "not paused:")


def _setting(target: Target, json: bool, name: str, value: str | None, none: bool, *,
             field: str, what: str, usage: tuple[str, str], parse: Callable[[str], object],
             store: Callable[[Queues, Any], Awaitable[bool]]) -> int:
    """Set one stored queue setting to ``parse(value)``, or clear it (``--none``, ``off``);
    ``usage`` is the argument's name and an example command, for the usage errors."""
    metavar, example = usage
    if none and value is not None:
        raise UsageError(f"give {metavar} or --none, not both")
    if not none and value is None:
        raise UsageError(f"give {metavar} (e.g. {example}), or --none (or off) to clear it")
    new = None if none or str(value).strip().lower() in _OFF else parse(str(value))
    if new is None:
        done, same = f"cleared the {what} of", f"no {what} on"
    else:
        done, same = f"set {what} {new} on", f"{what} already {new} on"
    return _change(target, json, name, lambda q: store(q, new), {field: new}, done, same)


def _count(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"N must be an integer >= 1 or off, got {value!r}") from None


@app.command
def limit(name: Name, value: Limit = None, /, *,
          none: Clear = False, json: Json = False, target: Target = Target()) -> int:  # noqa: B008
    """Allow at most N jobs of the queue to run at once across all workers (enforced when
    workers claim; audited)."""
    return _setting(target, json, name, value, none, field="concurrency_limit",
                    what="concurrency limit", usage=("N", "limit emails 5"), parse=_count,
                    store=lambda q, n: q.set_concurrency_limit(name, n, actor=actor()))


@app.command
def rate(name: Name, value: RateLimit = None, /, *,
         none: Clear = False, json: Json = False, target: Target = Target()) -> int:  # noqa: B008
    """Allow at most N starts of the queue's jobs per second, minute or hour across all workers
    (a token bucket of N, enforced when workers claim; audited)."""
    from soniq.features.queues import check_rate_limit  # here: soniq --help stays quick

    return _setting(target, json, name, value, none, field="rate_limit", what="rate limit",
                    usage=("RATE", "rate emails 20/s"), parse=check_rate_limit,
                    store=lambda q, text: q.set_rate_limit(name, text, actor=actor()))
