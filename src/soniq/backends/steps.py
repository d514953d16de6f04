"""The store of durable functions' saved steps (``backend.steps``; every backend has it):
``soniq_steps`` on SQLite and PostgreSQL (PostgreSQL migration 0020, SQLite 0014), the job's row
on memory. Rows go with their job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from soniq.types.durable import StepRow, StepWrite

__all__ = ["StepStore"]


@runtime_checkable
class StepStore(Protocol):
    """Durable functions' steps, each written only under its attempt's lease."""

    async def load(self, job_id: str) -> list[StepRow]:
        """Every saved step of the job (values as stored text), in position order; one read."""
        ...

    async def save(self, writes: Sequence[StepWrite]) -> list[str]:
        """Apply each write while its job is ``processing`` under its ``lease_id`` (rows
        ``INSERT ... ON CONFLICT DO NOTHING``, then the dropped keys deleted); the job ids
        written. One statement (or transaction) for the batch; a refused write is no error."""
        ...
