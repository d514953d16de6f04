"""Flow-control stores of :class:`~soniq.backends.memory.MemoryBackend`: queue settings and the
audit log (:mod:`soniq.backends.control`), in dicts and a list. No method awaits between reading
and writing, so each is atomic under any AnyIO backend."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from soniq.backends.control import QUEUE_CHANNEL, QUEUE_DEFAULTS, QueueSetting
from soniq.serialization import utc_now

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable
    from datetime import datetime

    from soniq.backends.control import QueueField, QueueValue
    from soniq.types import AuditEntry

__all__ = ["MemoryAuditStore", "MemoryQueueStore"]


class MemoryAuditStore:
    """The audit log as a list, oldest first."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    async def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    async def list(self, limit: int) -> builtins.list[AuditEntry]:
        return self.entries[::-1][:limit]

    def prune(self, before: datetime) -> int:
        """Forget the entries older than ``before``; how many."""
        kept = [entry for entry in self.entries if entry.at >= before]
        pruned = len(self.entries) - len(kept)
        self.entries = kept
        return pruned


class MemoryQueueStore:
    """Queue settings by name; ``notify`` is the backend's in-process NOTIFY."""

    def __init__(self, audit: MemoryAuditStore, notify: Callable[[str, str], None]) -> None:
        self.settings: dict[str, QueueSetting] = {}
        # A rate-limited queue's token bucket: (tokens, refilled_at); none stored: full.
        self.buckets: dict[str, tuple[float, datetime]] = {}
        self._audit = audit
        self._notify = notify

    async def list(self) -> builtins.list[QueueSetting]:
        return [self.settings[name] for name in sorted(self.settings)]

    def paused_now(self) -> frozenset[str]:
        """The paused queues (what the claim excludes)."""
        return frozenset(name for name, s in self.settings.items() if s.paused)

    async def set(self, name: str, field: QueueField, value: QueueValue, *,
                  audit: AuditEntry) -> bool:
        old = self.settings.get(name)
        changed = (QUEUE_DEFAULTS[field] if old is None else getattr(old, field)) != value
        if changed:
            base = old or QueueSetting(name)
            values: dict[str, Any] = {field: value, "updated_at": utc_now()}
            self.settings[name] = dataclasses.replace(base, **values)
            if field == "rate_limit":  # a new rate starts with a full bucket
                self.buckets.pop(name, None)
        self._audit.entries.append(
            dataclasses.replace(audit, outcome="ok" if changed else "not_applied"))
        if changed:
            self._notify(QUEUE_CHANNEL, name)
        return changed
