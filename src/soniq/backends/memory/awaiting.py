"""The memory backend's :class:`~soniq.backends.awaiting.AwaitStore`: a marked row's end is
sent to the backend's in-process listeners (``MemoryBackend._notify`` on the awaited channel,
from the call that writes it), so waiters wake in process with no polling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.backends.awaiting import AWAITED_CHANNEL

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["MemoryAwaitStore"]


class MemoryAwaitStore:
    """Reached as ``MemoryBackend.awaits``; ``listeners`` is the backend's list of
    ``on_notify(channel, payload)`` callbacks."""

    def __init__(self, jobs: dict[str, dict[str, Any]],
                 listeners: list[Callable[[str, str], None]]) -> None:
        self._jobs = jobs
        self._listeners = listeners

    async def mark(self, job_id: str) -> None:
        row = self._jobs.get(job_id)
        if row is not None:
            row["awaited"] = True

    async def subscribe(self, on_ended: Callable[[Sequence[str]], None],
                        on_lost: Callable[[], None]) -> _Subscription:
        def on_notify(channel: str, payload: str) -> None:
            if channel == AWAITED_CHANNEL:
                on_ended(payload.split())

        self._listeners.append(on_notify)
        return _Subscription(self._listeners, on_notify)


class _Subscription:
    def __init__(self, listeners: list[Callable[[str, str], None]],
                 on_notify: Callable[[str, str], None]) -> None:
        self._listeners = listeners
        self._on_notify = on_notify

    async def close(self) -> None:
        if self._on_notify in self._listeners:
            self._listeners.remove(self._on_notify)
