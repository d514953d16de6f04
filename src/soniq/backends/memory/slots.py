"""Concurrency slots of the memory backend: the reference semantics of concurrency limits.

A limited job's row carries its ``concurrency_key`` (None: not limited) and ``hold`` (None:
claimable; ``'slot'``: parked until one of its key's slots is handed to it). ``active`` counts,
per (job name, key), the jobs that are unparked and queued or processing; it never exceeds the
limit, and jobs are parked only while it is at the limit. See ARCHITECTURE.md, "Concurrency
limits".
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from soniq.types import JobStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["PARKED", "Slots"]

#: ``hold`` of a job waiting for a concurrency slot.
PARKED = "slot"

_LIVE = (JobStatus.QUEUED, JobStatus.PROCESSING)


class Slots:
    """Slot counters and parked jobs over the backend's ``rows`` (id -> row dict)."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self._rows = rows
        self.active: dict[tuple[str, str], int] = {}
        # Per key: the ids of its parked jobs, smallest (oldest) first; stale entries (a parked
        # job cancelled or deleted since) are skipped when popped.
        self._parked: dict[tuple[str, str], list[str]] = {}

    def admit(self, row: dict[str, Any], limit: int | None) -> None:
        """A new limited row: take a slot if one is free (``limit`` None: only when none is
        taken), else park it."""
        group = (row["job_name"], row["concurrency_key"])
        active = self.active.get(group, 0)
        if active < (limit or 1):
            self.active[group] = active + 1
            row["hold"] = None
        else:
            self.park(row)

    def park(self, row: dict[str, Any]) -> None:
        """Park a queued limited row (it waits for a hand-over or the reconciliation)."""
        row["hold"] = PARKED
        heapq.heappush(self._parked.setdefault((row["job_name"], row["concurrency_key"]), []),
                       row["id"])

    def release(self, row: dict[str, Any]) -> None:
        """``row`` leaves queued/processing for good (finished, cancelled, deleted): if it held
        a slot, hand it to the oldest parked job of its key, else free it. Call it before the
        row changes status or goes away."""
        if row["concurrency_key"] is None or row["hold"] is not None:
            return
        group = (row["job_name"], row["concurrency_key"])
        heir = self._next_parked(group)
        if heir is not None:
            heir["hold"] = None
        else:
            self.active[group] = max(self.active.get(group, 0) - 1, 0)

    def _next_parked(self, group: tuple[str, str]) -> dict[str, Any] | None:
        ids = self._parked.get(group)
        while ids:
            job_id = heapq.heappop(ids)
            if self._is_parked(job_id):
                return self._rows[job_id]
        return None

    def prune(self) -> int:
        """Forget the idle keys (no slot taken, no parked job); how many."""
        idle = [group for group, active in self.active.items()
                if not active and not any(self._is_parked(job_id) for job_id in
                                          self._parked.get(group, ()))]
        for group in idle:
            del self.active[group]
            self._parked.pop(group, None)  # only stale entries were left
        return len(idle)

    def _is_parked(self, job_id: str) -> bool:
        row = self._rows.get(job_id)
        return row is not None and row["status"] == JobStatus.QUEUED and row["hold"] == PARKED

    def reconcile(self, limits: Mapping[str, int]) -> int:
        """For each key with parked jobs whose job name is in ``limits`` (name -> limit):
        recount its active jobs, unpark up to the limit in id order; return how many were
        unparked."""
        unparked = 0
        for group in [g for g, ids in self._parked.items() if ids and g[0] in limits]:
            active = sum(1 for row in self._rows.values()
                         if (row["job_name"], row["concurrency_key"]) == group
                         and row["hold"] is None and row["status"] in _LIVE)
            while active < limits[group[0]]:
                heir = self._next_parked(group)
                if heir is None:
                    break
                heir["hold"] = None
                active += 1
                unparked += 1
            self.active[group] = active
        return unparked
