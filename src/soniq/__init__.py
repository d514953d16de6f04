"""Soniq: background jobs for Python, stored in the PostgreSQL you already run."""

from __future__ import annotations

from soniq._version import __version__
from soniq.app import Soniq
from soniq.backends.base import StorageBackend
from soniq.errors import SoniqError
from soniq.registry import TaskRef
from soniq.runtime import Worker
from soniq.settings import SoniqSettings
from soniq.types import JobContext, JobRecord, JobStatus, QueueStats, Snooze

__all__ = [
    "JobContext",
    "JobRecord",
    "JobStatus",
    "QueueStats",
    "Soniq",
    "SoniqError",
    "Snooze",
    "SoniqSettings",
    "StorageBackend",
    "TaskRef",
    "Worker",
    "__version__",
]
