"""Store protocols of flow control: queue settings (``soniq_queues``) and the audit log
(``soniq_audit``), offered by a backend as ``backend.queues`` and ``backend.audit`` (re-exported
by :mod:`soniq.backends.stores`, where the other store protocols live).

A queue's setting is a row only once something was set on it; a queue without one has the
defaults (:data:`QUEUE_DEFAULTS`). Every change is written together with its audit row, in one
transaction, so a change is never without its record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    import builtins
    from datetime import datetime

    from soniq.types import AuditEntry

__all__ = ["QUEUE_CHANNEL", "QUEUE_DEFAULTS", "QUEUE_FIELDS", "AuditStore", "QueueField",
           "QueueSetting", "QueueStore", "QueueValue"]

#: The NOTIFY channel (PostgreSQL; the memory backend's in-process one too) that tells workers a
#: queue's setting changed; the payload is the queue name.
QUEUE_CHANNEL = "soniq_queues"

#: The settings a queue has.
QueueField: TypeAlias = Literal["paused", "concurrency_limit", "rate_limit"]
QUEUE_FIELDS: tuple[QueueField, ...] = ("paused", "concurrency_limit", "rate_limit")
#: A setting's value: ``paused`` a bool, ``concurrency_limit`` an int, ``rate_limit`` text.
QueueValue: TypeAlias = bool | int | str | None
#: What a queue without a stored row has.
QUEUE_DEFAULTS: dict[QueueField, QueueValue] = {
    "paused": False, "concurrency_limit": None, "rate_limit": None}


@dataclass(frozen=True, slots=True)
class QueueSetting:
    """A queue's stored settings (validated before they were stored)."""

    name: str
    paused: bool = False
    concurrency_limit: int | None = None
    rate_limit: str | None = None
    updated_at: datetime | None = None

    @property
    def gated(self) -> bool:
        """Not paused, and a limit governs its starts (claimed only through the gate)."""
        return not self.paused and (self.concurrency_limit is not None
                                    or self.rate_limit is not None)


@runtime_checkable
class QueueStore(Protocol):
    """Per-queue settings. The claim of the same backend reads them itself (in its database
    work), so pauses and limits are exact whatever a worker last read here. A queue's rate
    limit has a token bucket stored with its row; a change of ``rate_limit`` refills it."""

    async def list(self) -> builtins.list[QueueSetting]:
        """Every stored setting, by name."""
        ...

    async def set(self, name: str, field: QueueField, value: QueueValue, *,
                  audit: AuditEntry) -> bool:
        """In one transaction: give queue ``name`` this ``value`` of ``field`` (storing a row
        when it has none and the value is not the default) and record ``audit`` with the outcome
        ``ok`` when that changed it, ``not_applied`` when it already had the value (the entry's
        own ``outcome`` is replaced); on a change, notify ``QUEUE_CHANNEL`` with the name where
        the backend has notifications. True when it changed."""
        ...


@runtime_checkable
class AuditStore(Protocol):
    """Recorded changes (``soniq_audit``), written by every process that changes something
    through the API, the CLI or the dashboard."""

    async def record(self, entry: AuditEntry) -> None: ...

    async def list(self, limit: int) -> builtins.list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""
        ...
