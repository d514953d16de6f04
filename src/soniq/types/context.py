"""What a running job sees and may hand back (re-exported by :mod:`soniq.types`): its
:class:`JobContext`, the worker's :class:`JobReporter` behind ``progress``/``checkpoint``/steps,
and the two ways to give an attempt back, :class:`Snooze` and :class:`RateLimited`."""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from soniq.types.durable import StepRow

__all__ = ["JobContext", "JobReporter", "RateLimited", "Snooze"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a running job knows about itself. Declare a parameter annotated ``JobContext`` and the
    worker passes it in; it is never part of the stored arguments."""

    job_id: str
    job_name: str
    attempt: int
    max_attempts: int
    queue: str
    worker_id: str
    scheduled_at: datetime
    created_at: datetime
    #: This claim of the job: a new id per attempt (also when a re-queued job runs again under
    #: the same attempt number). Every write of the attempt's outcome is fenced by it.
    lease_id: str = ""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("soniq.job"))
    #: The results of the jobs it waited for, decoded like ``get_result``: by step name (a
    #: workflow's step) or job id (``depends_on``); None for a dependency that did not end
    #: ``done`` (it runs under ``on_dependency_failure="run"``). Empty without dependencies.
    dependency_results: Mapping[str, Any] = field(default_factory=dict)
    #: The state the latest ``checkpoint`` of an earlier attempt saved, decoded (None on the
    #: first attempt, or when no attempt checkpointed).
    checkpoint_state: Any = None
    #: Where ``progress`` and ``checkpoint`` go (the worker's); None: nowhere (a context built
    #: by hand, in a test).
    reporter: JobReporter | None = field(default=None, repr=False, compare=False)

    async def progress(self, value: float | Mapping[str, Any]) -> None:
        """Report how far the job is: a number from 0 to 100 or a JSON object of at most 4 KiB
        (else ``ValidationError``); the latest is written about once a second at most (shown by
        ``get_job(...)["progress"]``). ``LeaseLostError``: this attempt lost its lease."""
        if self.reporter is not None:
            await self.reporter.progress(self, value)

    async def checkpoint(self, state: Any) -> None:
        """Save a JSON state and return once it is stored: the next attempt reads it as
        ``checkpoint_state``. ``LeaseLostError``: this attempt lost its lease."""
        if self.reporter is not None:
            await self.reporter.checkpoint(self, state)


class JobReporter(typing.Protocol):
    """Takes a running job's ``progress`` and ``checkpoint`` (the worker's writer)."""

    async def progress(self, ctx: JobContext, value: Any) -> None: ...

    async def checkpoint(self, ctx: JobContext, state: Any) -> None: ...

    async def load_steps(self, ctx: JobContext) -> list[StepRow]:
        """A durable function's saved steps (values decoded): one read at its start."""
        ...

    async def save_steps(self, ctx: JobContext, put: Sequence[StepRow],
                         drop: Sequence[str] = ()) -> None:
        """Write steps (values plain) and drop saved ones; returns once stored.
        ``LeaseLostError``: this attempt lost its lease."""
        ...


@dataclass(frozen=True, slots=True)
class Snooze:
    """Return ``Snooze(seconds)`` from a job to run it again later without using an attempt."""

    seconds: float
    reason: str | None = None


class RateLimited(Exception):
    """Raise ``RateLimited(retry_after=seconds)`` from a job (for example on an HTTP 429): like
    a :class:`Snooze` the attempt is given back and the job runs again after ``retry_after``
    seconds, and in addition its rate bucket (its ``rate_key`` value, or its job name) is held
    for ``retry_after`` seconds for every worker. It is not a failure: ``on_error`` hooks do not
    run."""

    def __init__(self, retry_after: float, reason: str | None = None) -> None:
        super().__init__(reason or f"rate limited: retry after {retry_after:g}s")
        self.retry_after = retry_after
        self.reason = reason
