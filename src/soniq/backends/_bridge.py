"""Run asyncio-only drivers (asyncpg, aiosqlite) from any AnyIO event loop.

The only module in Soniq that imports ``asyncio``. Under asyncio, :func:`call` awaits the driver
directly (the fast path: no hop, no thread). Under trio, the driver runs on one private asyncio
loop in a daemon thread, started lazily and stopped at interpreter exit; the trio caller waits on
a trio event that the bridge thread sets through the trio token, so no thread blocks per call.

Rules (DESIGN.md §6):
- A pool or connection belongs to the loop that created it. Create them through :func:`call`, so
  under trio they live on the bridge loop, and never share one across loops.
- A cancelled trio caller cancels the asyncio task and waits (shielded) until it has really stopped,
  so the driver can discard a connection interrupted mid-protocol instead of reusing it.
- ``acquire()`` under trio hands out a :class:`BridgedConnection`, whose ``execute``/``fetch``/
  ``fetchrow``/``fetchval``/``executemany``/``transaction`` run on the bridge loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
import sniffio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

__all__ = ["BridgedConnection", "call", "on_asyncio", "unwrap"]

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def on_asyncio() -> bool:
    """True when the calling task runs on asyncio (drivers can be awaited directly): an asyncio
    loop runs this thread (what ``sniffio`` concludes too, at a few times the cost)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _bridge_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="soniq-asyncio-bridge", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
            atexit.register(_stop)
        return _loop


def _stop() -> None:
    global _loop, _thread
    with _lock:
        loop, thread, _loop, _thread = _loop, _thread, None, None
    if loop is None or thread is None:
        return
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    if not thread.is_alive():
        loop.close()


async def call(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Await ``fn(*args, **kwargs)`` (an asyncio driver call) from the current AnyIO loop."""
    if on_asyncio():
        return await fn(*args, **kwargs)
    return await _on_bridge(fn, *args, **kwargs)


async def _on_bridge(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    import trio  # the one non-asyncio backend AnyIO supports

    async def run() -> T:
        # The task inherits the trio caller's context; make sniffio (and AnyIO) see asyncio here.
        sniffio.current_async_library_cvar.set(None)
        return await fn(*args, **kwargs)

    future = asyncio.run_coroutine_threadsafe(run(), _bridge_loop())
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        # If the trio run ended meanwhile, nobody is waiting.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        with trio.CancelScope(shield=True):
            await done.wait()
        raise
    return future.result()


def unwrap(connection: Any) -> Any:
    """The driver connection behind a :class:`BridgedConnection` (or the argument itself)."""
    return connection.raw if isinstance(connection, BridgedConnection) else connection


class BridgedConnection:
    """A driver connection owned by the bridge loop, usable from trio with the same surface."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await call(self.raw.execute, *args, **kwargs)

    async def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return await call(self.raw.executemany, *args, **kwargs)

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return await call(self.raw.fetch, *args, **kwargs)

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        return await call(self.raw.fetchrow, *args, **kwargs)

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        return await call(self.raw.fetchval, *args, **kwargs)

    def transaction(self, **kwargs: Any) -> _BridgedTransaction:
        return _BridgedTransaction(self.raw.transaction(**kwargs))


class _BridgedTransaction:
    def __init__(self, raw: Any) -> None:
        self._raw = raw

    async def __aenter__(self) -> _BridgedTransaction:
        await call(self._raw.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        with anyio.CancelScope(shield=True):
            if exc_type is None:
                await call(self._raw.commit)
            else:
                await call(self._raw.rollback)
