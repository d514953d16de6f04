"""What several commands share: the global options, finding the user's app, running a command on
the chosen event loop, parsing times and durations, logging."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import anyio
from cyclopts import Parameter

from soniq.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from soniq.app import Soniq

# soniq.app (and with it pydantic-settings) is imported inside the functions that use it, so that
# ``soniq --help`` and a command's ``--help`` stay quick.

__all__ = [
    "GLOBALS",
    "AppPath",
    "Globals",
    "LogFormat",
    "Loop",
    "Target",
    "UsageError",
    "app_spec",
    "configure_logging",
    "event_loop",
    "import_attribute",
    "import_module",
    "load_app",
    "open_app",
    "parse_duration",
    "parse_when",
    "run",
]

T = TypeVar("T")
Loop = Literal["asyncio", "trio"]
LogFormat = Literal["text", "json"]
#: The optional first argument of the commands that work on the user's app.
AppPath = Annotated[str | None, Parameter(name="APP", env_var="SONIQ_APP")]


class UsageError(ConfigurationError):
    """The command line was wrong (exit code 2)."""


@dataclass
class Globals:
    """The options given before the command (``soniq --database-url ... jobs list``)."""

    database_url: str | None = None
    app: str | None = None
    loop: Loop = "asyncio"
    log_format: LogFormat = "text"


#: Filled in by the launcher in :mod:`soniq.cli` before the command runs.
GLOBALS = Globals()


@Parameter(name="*")
@dataclass
class Target:
    """Which database (and optionally which app) a command works on."""

    database_url: str | None = None
    """Where jobs are stored: a PostgreSQL URL or a SQLite path (.db/.sqlite/.sqlite3).
    Default: SONIQ_DATABASE_URL, then postgresql://postgres@localhost/soniq."""

    app: str | None = None
    """Your Soniq instance as module:attribute (default: SONIQ_APP). Without it, Soniq's
    settings come from SONIQ_* env and .env."""


def open_app(target: Target | None = None, *, app_path: str | None = None,
             require_app: bool = False, **overrides: Any) -> Soniq:
    """The user's app when one is named (APP, ``--app``, ``SONIQ_APP``) or required; otherwise a
    plain ``Soniq`` on ``--database-url`` / ``SONIQ_DATABASE_URL`` with ``overrides``."""
    target = target or Target()
    url = target.database_url or GLOBALS.database_url
    spec = app_spec(target, app_path)
    if spec is not None or require_app:
        return load_app(spec, url)
    from soniq.app import Soniq

    return Soniq(database_url=url, **overrides)


def app_spec(target: Target, app_path: str | None = None) -> str | None:
    """The user's app named for this command (APP, ``--app``, ``SONIQ_APP``), or None."""
    return app_path or target.app or GLOBALS.app or os.environ.get("SONIQ_APP") or None


def run(soniq: Soniq, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` on the chosen event loop (``--loop``), closing ``soniq`` afterwards."""

    async def main() -> T:
        try:
            return await fn()
        finally:
            await soniq.close()

    return anyio.run(main, backend=event_loop())


def event_loop(loop: Loop | None = None) -> Loop:
    """The event loop to run on; checks that trio is installed when it is asked for."""
    chosen = loop or GLOBALS.loop
    if chosen == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise UsageError("--loop trio needs trio: pip install 'soniq[trio]'") from None
    return chosen


# -- logging ------------------------------------------------------------------------------------
class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str) -> None:
    """Log to stderr as text or JSON lines (``--log-format``, ``SONIQ_LOG_FORMAT``)."""
    handler = logging.StreamHandler(sys.stderr)
    if GLOBALS.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


# -- times and durations ------------------------------------------------------------------------
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``2h``, ``7d`` or ``1w``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise UsageError(f"{option} takes a duration such as 90s, 15m, 2h or 7d, got {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_when(text: str, option: str, *, past: bool) -> datetime:
    """An aware datetime from ISO 8601 (naive means UTC) or a duration from now (``past``: ago)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            seconds = parse_duration(text.lstrip("+"), option)
        except UsageError:
            raise UsageError(f"{option} takes an ISO 8601 time (2030-01-31T09:00:00+01:00) or a "
                             f"duration such as 30s, 15m, 2h, got {text!r}") from None
        delta = timedelta(seconds=seconds)
        return datetime.now(UTC) - delta if past else datetime.now(UTC) + delta
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


# -- finding the user's app ---------------------------------------------------------------------
def load_app(spec: str | None, database_url: str | None) -> Soniq:
    """Import the user's Soniq instance from ``module:attribute`` (or ``SONIQ_APP``), or from the
    modules in ``SONIQ_JOBS_MODULES`` when they define exactly one instance."""
    from soniq.app import Soniq

    if database_url is not None:
        os.environ["SONIQ_DATABASE_URL"] = database_url  # module-level Soniq() reads it
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    spec = spec or os.environ.get("SONIQ_APP") or None
    if spec is not None:
        app = _import_attribute(spec)
    else:
        modules = [m.strip() for m in os.environ.get("SONIQ_JOBS_MODULES", "").split(",") if m.strip()]
        if not modules:
            raise UsageError("no app given: pass APP as module:attribute (e.g. myproject.jobs:app), "
                             "--app, or set SONIQ_APP or SONIQ_JOBS_MODULES")
        found = {id(v): v for m in modules for v in vars(import_module(m)).values()
                 if isinstance(v, Soniq)}
        if len(found) != 1:
            raise UsageError(f"SONIQ_JOBS_MODULES={','.join(modules)} define {len(found)} Soniq "
                             "instances; name one with APP as module:attribute")
        app = next(iter(found.values()))
    if database_url is not None and app.settings.database_url != database_url:
        raise UsageError("--database-url cannot override the app: its code passes its own "
                         "database_url; remove it there or drop the flag")
    return app


def import_module(module: str) -> object:
    """Import the user's module; a missing module is a usage error, not a traceback."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UsageError(f"cannot import module {module!r}: {exc}") from None
        raise


def import_attribute(spec: str, what: str) -> tuple[object, object]:
    """``(module, value)`` for ``module:attribute`` (dots allowed in the attribute)."""
    if "://" in spec or spec.lower().endswith((".db", ".sqlite", ".sqlite3")):
        from soniq.settings import redact_url

        raise UsageError(f"{what} must be module:attribute, but {redact_url(spec)!r} looks like a "
                         "database URL: pass it with --database-url")
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"{what} must look like module:attribute (e.g. myproject.jobs:app), "
                         f"got {spec!r}")
    module = import_module(module_name)
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return module, value


def _import_attribute(spec: str) -> Soniq:
    from soniq.app import Soniq

    _, value = import_attribute(spec, "APP")
    if not isinstance(value, Soniq):
        raise UsageError(f"{spec} is a {type(value).__name__}, not a Soniq instance")
    return value
