"""The ``soniq`` command line (cyclopts). Commands are registered lazily by import string and stay
thin: parse, call one public method, print, map the outcome to an exit code.

Exit codes, the same in every command: 0 ok; 1 runtime failure (database unreachable, job
failed to enqueue, ...); 2 usage error; 3 a check failed; 130/143 forced stop by a second
SIGINT/SIGTERM. Configuration errors (a bad URL, an unknown app, malformed arguments) are usage
errors. Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

from soniq import __version__
from soniq.cli._common import GLOBALS, LogFormat, Loop
from soniq.errors import ConfigurationError, SoniqError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["app", "main"]

app = App(
    name="soniq",
    help="Background jobs for Python, stored in the PostgreSQL you already run.",
    version=__version__,
    default_parameter=Parameter(negative=()),  # flags are --json, not also --no-json
    help_epilogue="Every setting can also come from a SONIQ_* environment variable or .env file.\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 a check failed, "
    "130/143 forced stop by a second SIGINT/SIGTERM.",
)
app.command("soniq.cli.setup:setup", name="setup",
            help="Create the database if needed and apply pending migrations.")
app.command("soniq.cli.dashboard:dashboard", name="dashboard",
            help="Serve the web dashboard (default http://127.0.0.1:6161/).")
app.command("soniq.cli.worker:worker", name="worker",
            help="Run jobs until stopped (first SIGTERM/SIGINT drains, a second stops now).")
app.command("soniq.cli.scheduler:scheduler", name="scheduler",
            help="Run only the scheduler loop: enqueue the jobs of due recurring schedules.")
app.command("soniq.cli.status:status", name="status",
            help="Job counts per queue, running workers and the schema version.")
app.command("soniq.cli.jobs:inspect", name="inspect",
            help="Everything about one job: record, failed attempts with tracebacks, logs.")
app.command("soniq.cli.jobs:app", name="jobs",
            help="List, show, cancel, delete and retry jobs.")
app.command("soniq.cli.dead_letter:app", name="dead-letter",
            help="Inspect, replay and remove jobs that used up their retries.")
app.command("soniq.cli.schedules:app", name="schedules",
            help="List, pause, resume and remove recurring jobs.")
app.command("soniq.cli.queues:app", name="queues",
            help="List, pause, resume and limit queues (stored in the database, audited).")
app.command("soniq.cli.workflows:app", name="workflows",
            help="List, show and cancel workflows and batches.")
app.command("soniq.cli.enqueue:enqueue", name="enqueue",
            help="Add one job: soniq enqueue module:function --args '{\"k\": 1}'.")
app.command("soniq.cli.migrations:migrate_status", name="migrate-status",
            help="Applied and pending migrations (exit 3 when some are pending).")
app.command("soniq.cli.migrations:app", name="migrations",
            help="Print the migration SQL, for applying it with your own tool.")
app.command("soniq.cli.doctor:doctor", name="doctor",
            help="Check URL, reachability, schema, LISTEN, PgBouncer mode, clock skew, pool size.")
app.command("soniq.cli.demo:demo", name="demo",
            help="Run a worker on a few hundred sample jobs in ./soniq-demo.db (SQLite).")


@app.meta.default
def launcher(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    database_url: Annotated[str | None, Parameter(help=(
        "Where jobs are stored: a PostgreSQL URL or a SQLite path (.db/.sqlite/.sqlite3). "
        "Default: SONIQ_DATABASE_URL, then postgresql://postgres@localhost/soniq."))] = None,
    app_path: Annotated[str | None, Parameter(name="--app", env_var="SONIQ_APP", help=(
        "Your Soniq instance as module:attribute, for every command that uses one."))] = None,
    loop: Annotated[Loop, Parameter(env_var="SONIQ_LOOP", help="The event loop.")] = "asyncio",
    log_format: Annotated[LogFormat, Parameter(env_var="SONIQ_LOG_FORMAT",
                                               help="How logs are written to stderr.")] = "text",
) -> object:
    """Options before the command apply to it (``soniq --database-url X jobs list``)."""
    GLOBALS.database_url = database_url
    GLOBALS.app = app_path
    GLOBALS.loop = loop
    GLOBALS.log_format = log_format
    return app(tokens, exit_on_error=False, result_action="return_value")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``soniq`` script and ``python -m soniq``."""
    try:
        result = _run(list(argv) if argv is not None else sys.argv[1:])
    except CycloptsError:
        sys.exit(2)  # cyclopts has already printed the problem (with "did you mean")
    except (ConfigurationError, ValidationError) as exc:  # UsageError is a ConfigurationError
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except SoniqError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # a file that cannot be read or written
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


def _run(argv: list[str]) -> object:
    try:
        return app.meta(argv, exit_on_error=False, result_action="return_value")
    except BaseExceptionGroup as group:
        # A command's task group wraps what its body raised (``soniq worker`` on an unreachable
        # database or a refused setting): a lone Soniq error is reported like an unwrapped one.
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if isinstance(error, SoniqError):
            raise error from None
        raise
