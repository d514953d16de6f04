"""The shapes of durable functions' saved steps (``backend.steps``)."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["StepRow", "StepWrite"]


class StepRow(NamedTuple):
    """One saved step of a durable function. ``status``: ``done`` (``value``: its result),
    ``error`` (``{"type", "message"}``), ``sleep`` (the wake time, ISO 8601) or ``marker`` (a
    ``ctx.patched`` marker). ``value`` is stored text in a store and the plain value in the
    runtime (encoded and decoded like a job result)."""

    step_key: str
    position: int
    function: str
    digest: str
    status: str
    value: Any = None


class StepWrite(NamedTuple):
    """What one attempt writes at once, only while it holds ``lease_id``: the rows ``put``
    (``INSERT ... ON CONFLICT DO NOTHING``) and the keys ``drop``\\ ped (a saved error that
    escaped the function, so the retry runs the step again)."""

    job_id: str
    lease_id: str
    put: tuple[StepRow, ...] = ()
    drop: tuple[str, ...] = ()
