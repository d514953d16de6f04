"""Soniq: background jobs for Python, stored in the PostgreSQL you already run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq._version import __version__

if TYPE_CHECKING:
    from soniq.app import Soniq
    from soniq.backends.base import StorageBackend
    from soniq.errors import SoniqError
    from soniq.features.durable import DurableContext
    from soniq.registry import TaskRef
    from soniq.runtime import Worker
    from soniq.settings import SoniqSettings
    from soniq.types import (
        EnqueueOptions,
        JobContext,
        JobRecord,
        JobStatus,
        QueueInfo,
        QueueStats,
        RateLimited,
        Snooze,
    )

__all__ = [
    "DurableContext",
    "EnqueueOptions",
    "JobContext",
    "JobRecord",
    "JobStatus",
    "QueueInfo",
    "QueueStats",
    "RateLimited",
    "Soniq",
    "SoniqError",
    "Snooze",
    "SoniqSettings",
    "StorageBackend",
    "TaskRef",
    "Worker",
    "__version__",
]

# Each public name is imported on first use (PEP 562), so that a subpackage such as ``soniq.cli``
# does not pay for the whole library: ``soniq --help`` loads neither pydantic-settings nor the
# runtime. ``from soniq import Soniq`` loads what it always did.
_HOMES = {
    "DurableContext": "soniq.features.durable",
    "Soniq": "soniq.app",
    "StorageBackend": "soniq.backends.base",
    "SoniqError": "soniq.errors",
    "TaskRef": "soniq.registry",
    "Worker": "soniq.runtime",
    "SoniqSettings": "soniq.settings",
    "EnqueueOptions": "soniq.types",
    "JobContext": "soniq.types",
    "JobRecord": "soniq.types",
    "JobStatus": "soniq.types",
    "QueueInfo": "soniq.types",
    "QueueStats": "soniq.types",
    "RateLimited": "soniq.types",
    "Snooze": "soniq.types",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'soniq' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
