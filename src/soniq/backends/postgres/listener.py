"""The dedicated LISTEN connection that pushes wake-ups to a worker (DESIGN.md §6, §7).

One connection outside the pool listens on the jobs and cancel channels. Notifications reach the
caller's event loop: under asyncio asyncpg calls back on that loop; under trio the connection lives
on the bridge loop and each notification is handed to the trio run through its token
(``run_sync_soon``), never by touching trio objects from the bridge thread. A lost connection --
closed by the server, or silent past a keepalive ping -- raises
:class:`~soniq.errors.DatabaseError`; reconnecting is the caller's loop (``runtime/listener.py``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import anyio

from soniq.backends import _bridge
from soniq.backends._bridge import call
from soniq.backends.postgres import pooling, sql
from soniq.backends.postgres.errors import redact_url
from soniq.backends.postgres.schema import close_quietly, connect
from soniq.errors import ConfigurationError, DatabaseError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from anyio.abc import TaskStatus

    from soniq.backends.postgres.errors import Translator

__all__ = ["APPLICATION_NAME", "WAITERS_APPLICATION_NAME", "Listening", "listen", "subscribe"]

logger = logging.getLogger("soniq.postgres")

#: How the LISTEN connection shows in pg_stat_activity.
APPLICATION_NAME = "soniq listener"
#: How a :func:`subscribe` connection (an app's ``wait_for_job`` waiters) shows there.
WAITERS_APPLICATION_NAME = "soniq waiters"


async def listen(url: str, on_notify: Callable[[str, str], None], *, channels: Mapping[str, str],
                 keepalive: float, errors: Translator, task_status: TaskStatus[None],
                 refuse_pooling: str | None = None) -> None:
    """Listen until cancelled; ``task_status.started()`` once LISTEN is active. ``channels``
    maps each channel's name in the database (``Names.channels``: per schema) to the name
    ``on_notify`` is told (``soniq_jobs``, ``soniq_cancel``). With
    ``refuse_pooling`` (the setting ``url`` came from), a ``url`` reached through transaction
    pooling, where no LISTEN session can be held, raises :class:`ConfigurationError` naming it."""
    lost = anyio.Event()
    deliver, mark_lost = _handoff(on_notify, lost.set)

    def on_message(_conn: Any, _pid: int, channel: str, payload: str) -> None:
        deliver(channels[channel], payload)

    with errors:
        conn = await call(_open, url, list(channels), on_message, mark_lost, refuse_pooling,
                          APPLICATION_NAME)
    try:
        task_status.started()
        while True:
            with anyio.move_on_after(keepalive):
                await lost.wait()
            if lost.is_set():
                raise DatabaseError(f"the LISTEN connection to {redact_url(url)} was closed")
            # A half-open TCP connection never reports itself: ask for an answer in time.
            with anyio.move_on_after(keepalive) as ping, errors:
                await call(conn.execute, sql.PING)
            if ping.cancelled_caught:
                raise DatabaseError(
                    f"the LISTEN connection to {redact_url(url)} stopped answering for "
                    f"{keepalive:g}s"
                )
    finally:
        with anyio.CancelScope(shield=True):
            await call(close_quietly, conn)


async def subscribe(url: str, on_notify: Callable[[str, str], None], on_lost: Callable[[], None],
                    *, channels: Mapping[str, str], errors: Translator,
                    refuse_pooling: str | None = None) -> Listening:
    """A LISTEN connection like :func:`listen`'s that needs no task of the caller's: the driver
    calls ``on_notify`` (and ``on_lost`` once the connection is closed, by the server or by
    :meth:`Listening.close`) in the caller's event loop. It sends no keepalive, so a half-open
    connection goes unnoticed: its user re-reads at its own pace too (``wait_for_job``)."""
    deliver, mark_lost = _handoff(on_notify, on_lost)

    def on_message(_conn: Any, _pid: int, channel: str, payload: str) -> None:
        deliver(channels[channel], payload)

    with errors:
        conn = await call(_open, url, list(channels), on_message, mark_lost, refuse_pooling,
                          WAITERS_APPLICATION_NAME)
    return Listening(conn)


class Listening:
    """An open :func:`subscribe` connection."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        with anyio.CancelScope(shield=True):
            await call(close_quietly, self._conn)


def _handoff(on_notify: Callable[[str, str], None],
             on_lost: Callable[[], None]) -> tuple[Callable[[str, str], None], Callable[[], None]]:
    """Callbacks for the driver's loop that run ``on_notify`` / ``on_lost`` on the caller's."""

    def safe_notify(channel: str, payload: str) -> None:
        try:
            on_notify(channel, payload)
        except Exception:  # a wake-up handler's bug must not take the listener (or trio) down
            logger.exception("notification handler failed for %s %r", channel, payload)

    if _bridge.on_asyncio():
        return safe_notify, on_lost

    import trio  # the one non-asyncio backend AnyIO supports

    token = trio.lowlevel.current_trio_token()

    def deliver(channel: str, payload: str) -> None:
        # RunFinishedError: the trio run is over, nobody is listening any more.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(safe_notify, channel, payload)

    def mark_lost() -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(on_lost)

    return deliver, mark_lost


async def _open(url: str, channels: list[str], on_message: Callable[[Any, int, str, str], None],
                on_lost: Callable[[], None], refuse_pooling: str | None, name: str) -> Any:
    """Runs on the driver's loop: connect as ``name``, watch for termination, LISTEN on every
    channel."""
    conn = await connect(url, name=name)
    try:
        if refuse_pooling is not None and await pooling.transaction_pooled(
                conn, lambda: _other_pid(url)):
            raise ConfigurationError(
                f"{refuse_pooling} ({redact_url(url)}) is reached through transaction pooling "
                "(PgBouncer pool_mode = transaction, or similar), where no LISTEN session can be "
                f"held: point {refuse_pooling} at PostgreSQL directly (or at session pooling), "
                "or unset it to poll"
            )
        conn.add_termination_listener(lambda _conn: on_lost())
        for channel in channels:
            await conn.add_listener(channel, on_message)
    except BaseException:
        await close_quietly(conn)
        raise
    return conn


async def _other_pid(url: str) -> int:
    """``pg_backend_pid()`` on a second connection, opened while the first stays open."""
    conn = await connect(url, name=APPLICATION_NAME)
    try:
        return int(await conn.fetchval(pooling.BACKEND_PID))
    finally:
        await close_quietly(conn)
