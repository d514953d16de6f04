"""The worker runtime: one AnyIO task group per worker (see ``worker.py``)."""

from __future__ import annotations

from soniq.runtime.executor import current_job
from soniq.runtime.seams import (
    EventDispatcher,
    Hooks,
    JobEvent,
    JsonCodec,
    PayloadCodec,
    Service,
    cancel_job,
)
from soniq.runtime.worker import Worker

__all__ = [
    "EventDispatcher",
    "Hooks",
    "JobEvent",
    "JsonCodec",
    "PayloadCodec",
    "Service",
    "Worker",
    "cancel_job",
    "current_job",
]
