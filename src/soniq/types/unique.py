"""The shapes of uniqueness (``EnqueueOptions.on_conflict``, a job's :class:`Uniqueness`),
re-exported by :mod:`soniq.types`."""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias

__all__ = ["OnConflict", "Uniqueness"]

#: What a blocked unique job does (``EnqueueOptions.on_conflict``).
OnConflict: TypeAlias = Literal["keep", "replace"]


class Uniqueness(NamedTuple):
    """How a job with a dedup key meets the job standing on its key (see
    docs/tutorial/uniqueness.md): ``blocking`` -- the statuses of the standing job that block a
    new one (``"queued"`` also covers ``"waiting"``); ``window`` -- seconds after a job took the
    key during which any new job is refused (``unique_for``; None: none); ``replace`` -- a
    blocked new job updates a standing job that has not started (arguments, ``scheduled_at``)
    instead of being dropped; ``max_delay`` -- with ``replace``, the latest a replace may push
    the job to, in seconds after the standing job was first enqueued."""

    blocking: tuple[str, ...] = ("queued",)
    window: float | None = None
    replace: bool = False
    max_delay: float | None = None
