"""Feature stores of :class:`~soniq.backends.memory.MemoryBackend`: the reference semantics of
:mod:`soniq.backends.stores` over the memory backend's rows.

Like the backend itself, no method awaits between reading and writing, so each is atomic under
any AnyIO backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from soniq.backends.base import job_record
from soniq.serialization import utc_now
from soniq.types import JobRecord, JobStatus

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MemoryDeadLetterStore"]

_DEAD = JobStatus.DEAD_LETTER.value
_EPOCH = datetime.min.replace(tzinfo=UTC)


class MemoryDeadLetterStore:
    """The dead-letter queue over the memory backend's ``rows`` (id -> row dict); ``notify`` is
    the backend's in-process NOTIFY."""

    def __init__(self, rows: dict[str, dict[str, Any]],
                 notify: Callable[[str, str], None]) -> None:
        self._rows = rows
        self._notify = notify

    def _matching(self, queue: str | None, job_name: str | None,
                  since: datetime | None) -> list[dict[str, Any]]:
        rows = [
            row for row in self._rows.values()
            if row["status"] == _DEAD
            and (queue is None or row["queue"] == queue)
            and (job_name is None or row["job_name"] == job_name)
            and (since is None or (row["finished_at"] is not None and row["finished_at"] >= since))
        ]
        rows.sort(key=lambda row: (row["finished_at"] or _EPOCH, row["id"]), reverse=True)
        return rows

    def _dead_row(self, job_id: str) -> dict[str, Any] | None:
        row = self._rows.get(job_id) if isinstance(job_id, str) else None
        return row if row is not None and row["status"] == _DEAD else None

    async def list_dead(self, *, queue: str | None, job_name: str | None,
                        since: datetime | None, limit: int, offset: int) -> list[JobRecord]:
        rows = self._matching(queue, job_name, since)
        return [job_record(row) for row in rows[offset:offset + limit]]

    async def get_dead(self, job_id: str) -> JobRecord | None:
        row = self._dead_row(job_id)
        return None if row is None else job_record(row)

    async def count_dead(self, *, queue: str | None, job_name: str | None) -> int:
        return len(self._matching(queue, job_name, None))

    async def replay(self, job_id: str) -> str | None:
        row = self._dead_row(job_id)
        if row is None:
            return None
        self._requeue(row, utc_now())
        self._notify("soniq_jobs", row["queue"])
        return str(row["queue"])

    async def replay_matching(self, *, queue: str | None, job_name: str | None,
                              since: datetime | None, limit: int | None) -> list[tuple[str, str]]:
        rows = self._matching(queue, job_name, since)
        if limit is not None:
            rows = rows[:limit]
        now = utc_now()
        for row in rows:
            self._requeue(row, now)
        for woken in sorted({row["queue"] for row in rows}):
            self._notify("soniq_jobs", woken)
        return [(row["id"], row["queue"]) for row in rows]

    async def delete_dead(self, job_id: str) -> bool:
        if self._dead_row(job_id) is None:
            return False
        del self._rows[job_id]
        return True

    async def purge(self, *, finished_before: datetime | None) -> int:
        doomed = [
            job_id for job_id, row in self._rows.items()
            if row["status"] == _DEAD
            and (finished_before is None
                 or (row["finished_at"] is not None and row["finished_at"] < finished_before))
        ]
        for job_id in doomed:
            del self._rows[job_id]
        return len(doomed)

    @staticmethod
    def _requeue(row: dict[str, Any], now: datetime) -> None:
        # A dead-lettered row holds no dedup key (it released it when first claimed).
        row.update(status=JobStatus.QUEUED.value, attempts=0, scheduled_at=now, updated_at=now,
                   started_at=None, finished_at=None, expires_at=None, result=None,
                   worker_id=None, lease_id=None, cancel_requested=False)
