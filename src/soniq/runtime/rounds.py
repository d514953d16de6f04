"""The stop of a periodic loop (heartbeat, cleanup): a round in flight finishes before
``stop()`` returns, and no round starts after it."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["Rounds"]


class Rounds:
    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self._stopped = False

    async def stop(self) -> None:
        """Waits for the round in flight; every later round is skipped."""
        async with self._lock:
            self._stopped = True

    @asynccontextmanager
    async def round(self) -> AsyncIterator[bool]:
        """One round: yields False once stopped (the body is to do nothing then); ``stop()``
        waits until the body has finished."""
        async with self._lock:
            yield not self._stopped
