"""The ``soniq`` command line (cyclopts). Commands are registered lazily by import string and stay
thin: parse, call one public method, print, map the outcome to an exit code.

Exit codes, the same in every command: 0 ok; 1 runtime failure (database unreachable, job
failed to enqueue, ...); 2 usage error; 3 a check failed; 130/143 forced stop by a second
SIGINT/SIGTERM.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from cyclopts import App
from cyclopts.exceptions import CycloptsError

from soniq import __version__
from soniq.cli._common import UsageError
from soniq.errors import SoniqError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["app", "main"]

app = App(
    name="soniq",
    help="Background jobs for Python, stored in the PostgreSQL you already run.",
    version=__version__,
    help_epilogue="Every setting can also come from a SONIQ_* environment variable or .env file.\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 a check failed, "
    "130/143 forced stop by a second SIGINT/SIGTERM.",
)
app.command("soniq.cli.setup:setup", name="setup",
            help="Create the database if needed and apply pending migrations.")
app.command("soniq.cli.worker:worker", name="worker",
            help="Run jobs until stopped (first SIGTERM/SIGINT drains, a second stops now).")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``soniq`` script and ``python -m soniq``."""
    try:
        result = app(list(argv) if argv is not None else sys.argv[1:], exit_on_error=False,
                     result_action="return_value")
    except CycloptsError:
        sys.exit(2)  # cyclopts has already printed the problem (with "did you mean")
    except UsageError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except SoniqError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
