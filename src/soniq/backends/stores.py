"""Store protocols of the optional features: the small persistence surface each feature needs,
implemented per backend next to that backend's SQL (DESIGN.md §2).

A backend offers a store as a property (``backend.dead_letters``); features reach it through the
protocol only, so they never see a driver. The rules of :mod:`soniq.backends.base` hold here too:
timestamps are aware UTC datetimes, malformed ids are "not found", every state change is guarded
by the row's current status, and losing that race is "not applied", never an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from datetime import datetime

    from soniq.types import JobRecord

__all__ = ["DeadLetterStore"]


@runtime_checkable
class DeadLetterStore(Protocol):
    """Jobs in status ``dead_letter``: they stay in the one jobs table, keeping their id and
    their ``errors`` (one entry per failed attempt).

    Filters are exact matches (``queue``, ``job_name``) and ``finished_at >= since``; arguments
    arrive validated. Listing order is newest dead-lettered first: ``finished_at DESC, id DESC``.
    """

    async def list_dead(self, *, queue: str | None, job_name: str | None,
                        since: datetime | None, limit: int, offset: int) -> list[JobRecord]:
        """Dead-lettered jobs matching the filters, newest first."""
        ...

    async def get_dead(self, job_id: str) -> JobRecord | None:
        """The job when it exists and is dead-lettered, else None."""
        ...

    async def count_dead(self, *, queue: str | None, job_name: str | None) -> int:
        """How many dead-lettered jobs match."""
        ...

    async def replay(self, job_id: str) -> str | None:
        """``dead_letter`` -> ``queued`` (same id, attempts 0, due now, finish and expiry
        cleared, errors kept) and wake listeners on its queue. The job's queue, or None when it
        was not dead-lettered."""
        ...

    async def replay_matching(self, *, queue: str | None, job_name: str | None,
                              since: datetime | None, limit: int | None) -> list[tuple[str, str]]:
        """Replay up to ``limit`` (all when None) matching jobs, newest first, waking each queue
        once. ``(id, queue)`` of each job replayed."""
        ...

    async def delete_dead(self, job_id: str) -> bool:
        """Remove the job if it is dead-lettered; True when removed."""
        ...

    async def purge(self, *, finished_before: datetime | None) -> int:
        """Remove dead-lettered jobs finished before the cutoff (all when None); how many."""
        ...
