"""The lifecycle of a ``Soniq`` app: new (nothing opened) -> open (backend initialised) -> closed.

One state and one guard, shared by the app and its producer: every public call on a closed app
raises :class:`~soniq.errors.AppClosedError` with the same message, from :meth:`Lifecycle.check`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import anyio

from soniq.errors import AppClosedError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Lifecycle", "State"]


class State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Lifecycle:
    """The app's :class:`State`; ``open()`` runs ``initialize`` once, ``state = CLOSED`` is for good.

    Callers on the hot path test ``state is State.OPEN`` themselves and await ``open()`` only
    when it is not (no extra await per call once open).
    """

    __slots__ = ("_initialize", "_lock", "state")

    def __init__(self, initialize: Callable[[], Awaitable[None]]) -> None:
        self._initialize = initialize
        self._lock = anyio.Lock()
        self.state = State.NEW

    def check(self) -> None:
        """The one closed-app guard."""
        if self.state is State.CLOSED:
            raise AppClosedError("this Soniq instance is closed; create a new one")

    async def open(self) -> None:
        """Initialise the backend unless it is open; refuse once closed."""
        self.check()
        if self.state is State.OPEN:
            return
        async with self._lock:
            self.check()  # closed while waiting for the lock
            if self.state is State.NEW:
                await self._initialize()
                if self.state is State.NEW:  # not closed meanwhile: closed stays closed
                    self.state = State.OPEN
