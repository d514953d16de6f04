"""Durable functions' saved steps on :class:`~soniq.backends.memory.MemoryBackend`
(``backend.steps``): kept on the job's row (``row["steps"]``, by key), so they go with it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.types import JobStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from soniq.types.durable import StepRow, StepWrite

__all__ = ["MemoryStepStore"]


class MemoryStepStore:
    """Writes :class:`~soniq.types.durable.StepWrite` onto the rows it shares with the backend."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self._rows = rows

    async def load(self, job_id: str) -> list[StepRow]:
        row = self._rows.get(job_id)
        steps: dict[str, StepRow] = {} if row is None else row.get("steps") or {}
        return sorted(steps.values(), key=lambda step: step.position)

    async def save(self, writes: Sequence[StepWrite]) -> list[str]:
        written = []
        for write in writes:
            row = self._rows.get(write.job_id)
            if (row is None or row["status"] != JobStatus.PROCESSING
                    or row["lease_id"] != write.lease_id):
                continue
            steps: dict[str, StepRow] = row.setdefault("steps", {})
            for step in write.put:
                steps.setdefault(step.step_key, step)
            for key in write.drop:
                steps.pop(key, None)
            written.append(write.job_id)
        return written
