"""What several commands share: finding the user's app, logging, one-line errors."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Literal

from soniq.app import Soniq
from soniq.errors import ConfigurationError

__all__ = ["Loop", "UsageError", "configure_logging", "load_app"]

Loop = Literal["asyncio", "trio"]


class UsageError(ConfigurationError):
    """The command line was wrong (exit code 2)."""


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def load_app(spec: str | None, database_url: str | None) -> Soniq:
    """Import the user's Soniq instance from ``module:attribute`` (or ``SONIQ_APP``), or from the
    modules in ``SONIQ_JOBS_MODULES`` when they define exactly one instance."""
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
        found = {id(v): v for m in modules for v in vars(_import(m)).values() if isinstance(v, Soniq)}
        if len(found) != 1:
            raise UsageError(f"SONIQ_JOBS_MODULES={','.join(modules)} define {len(found)} Soniq "
                             "instances; name one with APP as module:attribute")
        app = next(iter(found.values()))
    if database_url is not None and app.settings.database_url != database_url:
        raise UsageError("--database-url cannot override the app: its code passes its own "
                         "database_url; remove it there or drop the flag")
    return app


def _import(module: str) -> object:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UsageError(f"cannot import module {module!r}: {exc}") from None
        raise


def _import_attribute(spec: str) -> Soniq:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"APP must look like module:attribute (e.g. myproject.jobs:app), got {spec!r}")
    module = _import(module_name)
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(value, Soniq):
        raise UsageError(f"{spec} is a {type(value).__name__}, not a Soniq instance")
    return value
