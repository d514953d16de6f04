"""Dependencies of the memory backend: the reference semantics of jobs that wait for other jobs
(``StorageBackend.insert_jobs``: the edges, and the fan-in protocol).

A dependent row carries ``waiting_on`` (its unsatisfied edges; None: no dependencies) and
``on_dependency_failure``; a dependency carries ``has_dependents``. Each edge (dependency,
dependent) is satisfied at most once: when the dependency ends ``done``, or ends failed
(``dead_letter``, ``cancelled``, deleted unfinished) for a ``run`` dependent. A failed dependency
cancels its waiting ``cancel`` dependents, transitively, and leaves ``wait`` ones waiting. A
dependent whose count reaches zero is released (``queued``): woken, or parked when limited (a
hand-over or the reconciliation gives it a slot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.backends.dependencies import ENDED, check_found, edges_of, stored_dependencies
from soniq.serialization import loads
from soniq.types import DependencyResult, JobStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from soniq.backends.memory.slots import Slots
    from soniq.types import NewJob

__all__ = ["Dependencies"]

_WAITING = JobStatus.WAITING.value
_DONE = JobStatus.DONE.value
_UNFINISHED = frozenset({_WAITING, JobStatus.QUEUED.value, JobStatus.PROCESSING.value})


class Dependencies:
    """The edges over the backend's ``rows`` (id -> row dict). ``set_status`` is the backend's
    status change (it keeps the dedup keys), ``notify`` its in-process NOTIFY."""

    def __init__(self, rows: dict[str, dict[str, Any]], slots: Slots,
                 set_status: Callable[[dict[str, Any], str, datetime], None],
                 notify: Callable[[str, str], None]) -> None:
        self._rows = rows
        self._slots = slots
        self._set_status = set_status
        self._notify = notify
        # dependency id -> {dependent id: satisfied}
        self._edges: dict[str, dict[str, bool]] = {}
        # dependent id -> its dependencies, in the order given
        self._given: dict[str, tuple[str, ...]] = {}

    def check(self, jobs: Sequence[NewJob]) -> None:
        """Refuse ``jobs`` (before anything is written) when a dependency is neither stored nor
        one of them (:class:`~soniq.errors.ValidationError`)."""
        check_found(stored_dependencies(jobs), self._rows)

    def link(self, jobs: Sequence[NewJob], now: datetime) -> list[dict[str, Any]]:
        """The edges of ``jobs`` (inserted just now, stored ``waiting``); then the protocol for
        their dependencies that have already ended. Returns the rows of ``jobs`` it released
        (the caller admits them like new rows)."""
        for job in jobs:
            self._given[job.id] = edges_of(job)
            for dep in self._given[job.id]:
                self._edges.setdefault(dep, {})[job.id] = False
                row = self._rows.get(dep)
                if row is not None:
                    row["has_dependents"] = True
        released: list[dict[str, Any]] = []
        for dep in dict.fromkeys(d for job in jobs for d in job.depends_on):
            row = self._rows.get(dep)
            if row is not None and row["status"] in ENDED:
                released += self._settle(dep, row["status"] != _DONE, now)
        return released

    def ended(self, job_id: str, status: str, now: datetime) -> None:
        """Job ``job_id`` ended with ``status`` (``done``, ``dead_letter``, ``cancelled``;
        anything else: deleted unfinished): settle its dependents and wake the released."""
        if job_id not in self._edges:
            return
        for row in self._settle(job_id, status != _DONE, now):
            if row["concurrency_key"] is not None:
                self._slots.park(row)
            elif row["hold"] is None:
                self._notify("soniq_jobs", row["queue"])

    def _settle(self, job_id: str, failed: bool, now: datetime) -> list[dict[str, Any]]:
        """The protocol for one ended dependency; the dependents it released."""
        ended = [job_id]
        if failed:
            for doomed in self._doomed(job_id):
                self._set_status(doomed, JobStatus.CANCELLED.value, now)
                doomed["finished_at"] = now
                ended.append(doomed["id"])  # its own 'run' dependents are satisfied below
        released = []
        for dep in ended:
            edges = self._edges.get(dep, {})
            for dependent, satisfied in edges.items():
                row = self._rows.get(dependent)
                if (satisfied or row is None or row["status"] != _WAITING
                        or (failed and row["on_dependency_failure"] != "run")):
                    continue
                edges[dependent] = True
                row["waiting_on"] -= 1
                row["updated_at"] = now
                if row["waiting_on"] <= 0:
                    self._set_status(row, JobStatus.QUEUED.value, now)
                    released.append(row)
        return released

    def _doomed(self, job_id: str) -> list[dict[str, Any]]:
        """The waiting ``cancel`` dependents of ``job_id`` over unsatisfied edges, theirs, ..."""
        doomed: dict[str, dict[str, Any]] = {}
        pending = [job_id]
        while pending:
            for dependent, satisfied in self._edges.get(pending.pop(), {}).items():
                row = self._rows.get(dependent)
                if (satisfied or dependent in doomed or row is None
                        or row["status"] != _WAITING or row["on_dependency_failure"] != "cancel"):
                    continue
                doomed[dependent] = row
                pending.append(dependent)
        return list(doomed.values())

    def given(self, job_id: str) -> tuple[str, ...]:
        """The dependency ids of ``job_id``, in the order given."""
        return self._given.get(job_id, ())

    def results(self, job_id: str) -> list[DependencyResult]:
        """The stored dependencies of ``job_id`` with their results, in the order given."""
        found = []
        for dep in self._given.get(job_id, ()):
            row = self._rows.get(dep)
            if row is None:
                continue
            done = row["status"] == _DONE and row["result"] is not None
            found.append(DependencyResult(
                id=dep, job_name=row["job_name"], step_name=row["step_name"],
                status=JobStatus(row["status"]), result=loads(row["result"]) if done else None))
        return found

    def needed(self, job_id: str) -> bool:
        """Some dependent of ``job_id`` has not finished (it reads the job's result)."""
        return any(row is not None and row["status"] in _UNFINISHED
                   for row in map(self._rows.get, self._edges.get(job_id, ())))

    def forget(self) -> None:
        """Drop the edges of dependents that are gone (pruned, deleted)."""
        for dependent in [d for d in self._given if d not in self._rows]:
            del self._given[dependent]
        for dep in list(self._edges):
            edges = self._edges[dep]
            for dependent in [d for d in edges if d not in self._rows]:
                del edges[dependent]
            if not edges:
                del self._edges[dep]
