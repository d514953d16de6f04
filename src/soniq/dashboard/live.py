"""Live updates and chart rollups: one background loop per dashboard process, shared by every
browser.

- **Change feed.** While at least one event stream is open, every ``interval`` seconds (sooner
  when PostgreSQL NOTIFY says a queue got work, but at most once per :data:`MIN_GAP`) the hub
  reads the per-queue counts once and, when they differ from the last read, bumps
  :attr:`LiveHub.version`. Each server-sent-event stream waits on that version, so a hundred open
  tabs cost one query per tick, not a hundred, and no open tab costs none. On a large
  PostgreSQL table the counts are partly estimated (``estimated`` in the snapshot; see
  :class:`~soniq.backends.stores.QueueCounts`).
- **Rollups.** Every ``rollup_interval`` seconds one dashboard process sharing the database (a
  ``claim_maintenance`` leader) recounts recent minutes of finished jobs into
  ``soniq_stats_minute``; the charts read only that table.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import anyio

from soniq.errors import SoniqError
from soniq.serialization import utc_now

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from anyio.abc import TaskStatus

    from soniq.app import Soniq

__all__ = ["LiveHub"]

logger = logging.getLogger("soniq.dashboard")

#: Minutes recounted by each rollup: longer than the gap between rollups, shorter than the
#: default result_ttl (finished rows are pruned after it).
ROLLUP_WINDOW = timedelta(minutes=4)
#: Buckets older than this are deleted.
STATS_RETENTION = timedelta(days=2)
#: A comment is sent on an idle stream this often, so proxies keep it open.
KEEPALIVE = 15.0
#: The least time between two reads of the counts, however many notifications arrive.
MIN_GAP = 0.5


class LiveHub:
    """The dashboard's background loop and the fan-out point of its event streams."""

    def __init__(self, soniq: Soniq, *, interval: float = 2.0, rollup_interval: float = 30.0,
                 listen: bool = True, exact_counts_up_to: int = 200_000) -> None:
        self._soniq = soniq
        self.interval = interval
        self.exact_counts_up_to = exact_counts_up_to
        #: Reads of the counts so far (each one query, or a few when estimating).
        self.refreshes = 0
        self._refreshed_at: float | None = None
        self._refreshing = anyio.Lock()
        self._watched = anyio.Event()  # set while clients > 0
        self.rollup_interval = rollup_interval
        self._listen = listen
        self.version = 0
        self.snapshot: dict[str, Any] = {}
        self.clients = 0
        self.rolled_up_at: datetime | None = None
        #: ``listening``, ``polling (<reason>)`` or ``starting``.
        self.listen_status = "starting"
        self._changed = anyio.Event()
        self._wake = anyio.Event()
        self._stopped = False
        self._listen_delay = 1.0

    # -- the loops ------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._soniq.ensure_initialized()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._poll_loop)
            tg.start_soon(self._rollup_loop)
            if self._listen and self._soniq.backend.supports_listen:
                tg.start_soon(self._listen_loop)
            else:
                self.listen_status = (f"polling every {self.interval:g}s (the "
                                      f"{self._soniq.backend.name} backend has no LISTEN)")
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._stopped = True
                self._changed.set()  # end every open stream

    async def refresh(self) -> bool:
        """Read the counts once; True (and a new version) when they changed."""
        store = self._soniq.backend.dashboard
        if store is not None:
            counts = await store.queue_counts(exact_up_to=self.exact_counts_up_to)
            queues, estimated = counts.queues, counts.estimated
        else:
            queues, estimated = await self._soniq.get_queue_stats(), False
        self.refreshes += 1
        self._refreshed_at = anyio.current_time()
        snapshot = {"queues": queues, "estimated": estimated}
        if snapshot == self.snapshot:
            return False
        self.snapshot = snapshot
        self.version += 1
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        return True

    async def counts(self) -> dict[str, Any]:
        """The latest snapshot (``queues`` and ``estimated``), read again when older than
        ``interval`` (so page loads share the feed's reads)."""
        async with self._refreshing:
            at = self._refreshed_at
            if at is None or anyio.current_time() - at >= self.interval:
                await self.refresh()
        return self.snapshot

    async def _poll_loop(self) -> None:
        while True:
            if self.clients == 0:  # nobody watches: no reads at all until someone does
                await self._watched.wait()
            with anyio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            if self.clients == 0:
                continue
            try:
                async with self._refreshing:
                    await self.refresh()
            except SoniqError as exc:
                logger.warning("dashboard could not read queue counts: %s", exc)
            await anyio.sleep(MIN_GAP)

    async def _rollup_loop(self) -> None:
        while True:
            try:
                await self.rollup()
            except SoniqError as exc:
                logger.warning("dashboard could not roll up job counts: %s", exc)
            await anyio.sleep(self.rollup_interval)

    async def rollup(self, *, force: bool = False) -> bool:
        """Recount recent minutes if this process leads this round (or ``force``)."""
        backend = self._soniq.backend
        store = backend.dashboard
        if store is None:
            return False
        if not force and not await backend.claim_maintenance(
                "dashboard_rollup", max(self.rollup_interval * 0.9, 0.1)):
            return False
        now = utc_now()
        await store.rollup(since=now.replace(second=0, microsecond=0) - ROLLUP_WINDOW,
                           keep_after=now - STATS_RETENTION)
        self.rolled_up_at = now
        return True

    async def _listen_loop(self) -> None:
        backend = self._soniq.backend
        while True:
            try:
                # Called directly, not in a task group, so its error arrives bare (not in an
                # ExceptionGroup) and only this loop retries.
                await backend.listen(self._on_notify,
                                     task_status=cast("TaskStatus[None]", _Listening(self)))
            except SoniqError as exc:
                self.listen_status = f"polling every {self.interval:g}s (LISTEN failed: {exc})"
                logger.warning("dashboard LISTEN lost, retrying in %gs: %s",
                               self._listen_delay, exc)
            await anyio.sleep(self._listen_delay)
            self._listen_delay = min(self._listen_delay * 2, 30.0)

    def listening(self) -> None:
        self.listen_status = "listening"
        self._listen_delay = 1.0

    def _on_notify(self, channel: str, payload: str) -> None:
        self._wake.set()

    # -- the streams ----------------------------------------------------------------------------
    async def changes(self) -> AsyncIterator[dict[str, Any] | None]:
        """Yield the snapshot now and at each change; None after :data:`KEEPALIVE` idle seconds.
        Ends when the hub stops."""
        self.clients += 1
        self._watched.set()
        try:
            try:
                await self.counts()
            except SoniqError as exc:
                logger.warning("dashboard could not read queue counts: %s", exc)
            seen = self.version
            yield self.snapshot
            while not self._stopped:
                if self.version == seen:
                    with anyio.move_on_after(KEEPALIVE):
                        await self._changed.wait()
                if self._stopped:
                    return
                if self.version != seen:
                    seen = self.version
                    yield self.snapshot
                else:
                    yield None
        finally:
            self.clients -= 1
            if self.clients == 0:
                self._watched = anyio.Event()


class _Listening:
    """The ``task_status`` handed to ``backend.listen``: marks the hub as listening."""

    def __init__(self, hub: LiveHub) -> None:
        self._hub = hub

    def started(self, value: object = None) -> None:
        self._hub.listening()
