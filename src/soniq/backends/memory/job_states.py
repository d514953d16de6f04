"""Running jobs' progress and checkpoints on :class:`~soniq.backends.memory.MemoryBackend`,
written onto the job rows under the lease fence (``backend.job_states``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.types import JobStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from soniq.types import JobState

__all__ = ["MemoryJobStateStore"]


class MemoryJobStateStore:
    """Writes :class:`~soniq.types.JobState` onto the rows it shares with the backend."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self._rows = rows

    async def save(self, states: Sequence[JobState]) -> list[str]:
        written = []
        for state in states:
            row = self._rows.get(state.job_id)
            if (row is None or row["status"] != JobStatus.PROCESSING
                    or row["lease_id"] != state.lease_id):
                continue
            if state.progress is not None:
                row["progress"] = state.progress
            if state.checkpoint is not None:
                row["checkpoint"] = state.checkpoint
            written.append(state.job_id)
        return written
