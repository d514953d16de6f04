"""``app.wait_for_job``: wait for a job's outcome, woken by the backend instead of polling.

One :class:`Waiting` per app (and one on ``app.sync``'s loop) serves every waiter of it:

- A waiter reads the job; ended (``done``, ``dead_letter``, ``cancelled``) returns at once, and
  an unknown id raises :class:`~soniq.errors.JobNotFoundError`. Otherwise it takes the job's
  :class:`anyio.Event` (one per awaited id, shared by its waiters), makes sure the app's
  subscription is open, marks the job (``backend.awaits.mark``; on PostgreSQL a flag on the row,
  so the finishing transaction NOTIFYs) and reads again -- an end between the first read and
  the mark is seen by that read, every later one is pushed. Each wake-up reads the row again:
  deleted (or pruned) raises :class:`~soniq.errors.JobNotFoundError`, ended returns it.
- The subscription (``backend.awaits.subscribe``) is opened on the first wait and closed with
  the app: one LISTEN connection per app on PostgreSQL however many waiters, in-process
  callbacks on memory. A push sets the events of the ids it names.
- Polling is the fallback: without a subscription (SQLite; PostgreSQL behind transaction
  pooling without ``listen_url``; while LISTEN is down) a waiter re-reads after 10 ms, doubling
  up to ``poll_interval`` (1 s at most on SQLite). A subscription that breaks wakes every waiter
  to read (pushes sent meanwhile are lost) and is reopened by the next waiter, with backoff.
  While subscribed, a waiter still re-reads every ``poll_interval`` (a half-open connection
  reports nothing).
- ``on_progress``: see :func:`report_progress` (the one place progress reaches waiters).
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, cast

import anyio

from soniq.backends.dependencies import ENDED
from soniq.errors import DatabaseError, JobNotFoundError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from soniq.backends.awaiting import AwaitStore, Subscription
    from soniq.types import JobRecord

__all__ = ["PROGRESS_INTERVAL", "Waiting", "report_progress"]

logger = logging.getLogger("soniq")

#: The first re-read of a polling waiter (seconds); each further one waits twice as long.
FIRST_POLL = 0.01
#: The longest gap between two reads of a polling waiter without a push store (SQLite).
LONGEST_POLL = 1.0
#: The longest gap between two reads while ``on_progress`` is given (progress is not pushed).
PROGRESS_INTERVAL = 1.0
#: Backoff between attempts to reopen a broken subscription.
_RESUBSCRIBE = (0.1, 30.0)
_UNSEEN = object()


class Waiting:
    """The waiters of one app. ``read(id)`` is ``get_job``; ``decode(record)`` what
    ``get_result`` gives for it; ``store`` the backend's ``awaits`` (None: poll)."""

    def __init__(self, store: AwaitStore | None, *,
                 read: Callable[[str], Awaitable[JobRecord | None]],
                 decode: Callable[[JobRecord], Any], poll_interval: float) -> None:
        self._store = store
        self._read = read
        self._decode = decode
        self._poll_interval = poll_interval
        self._longest_poll = poll_interval if store is not None else min(poll_interval,
                                                                         LONGEST_POLL)
        self._events: dict[str, anyio.Event] = {}
        self._waiters: dict[str, int] = {}
        self._subscription: Subscription | None = None
        self._lock: anyio.Lock | None = None
        self._retry_at = 0.0
        self._backoff = _RESUBSCRIBE[0]
        self._closed = False
        #: How many times the subscription was opened (one per app, plus reconnects).
        self.subscriptions = 0

    @property
    def listening(self) -> bool:
        """Whether ends are pushed right now (the subscription is open)."""
        return self._subscription is not None

    @property
    def waiting(self) -> int:
        """How many jobs are awaited right now."""
        return len(self._waiters)

    async def wait(self, job_id: str, timeout: float | None = None,  # noqa: ASYNC109
                   on_progress: Callable[[Any], Any] | None = None) -> JobRecord:
        """The job's record once it ended, its ``result`` decoded (see the module docstring).

        Raises:
            TimeoutError: it had not ended after ``timeout`` seconds.
            JobNotFoundError: there is no such job, or it was deleted (or pruned).
        """
        with anyio.fail_after(timeout):
            record = await self._get(job_id)
            if record["status"] in ENDED:
                return self._outcome(record)
            self._waiters[job_id] = self._waiters.get(job_id, 0) + 1
            try:
                return await self._watch(job_id, on_progress)
            finally:
                self._waiters[job_id] -= 1
                if not self._waiters[job_id]:
                    del self._waiters[job_id]
                    self._events.pop(job_id, None)

    async def _watch(self, job_id: str, on_progress: Callable[[Any], Any] | None) -> JobRecord:
        if self._store is not None:
            await self._subscribe()
            await self._store.mark(job_id)
        delay = FIRST_POLL
        progress: object = _UNSEEN
        while True:
            event = self._events.setdefault(job_id, anyio.Event())
            record = await self._get(job_id)
            progress = await report_progress(record, progress, on_progress)
            if record["status"] in ENDED:
                return self._outcome(record)
            if self._subscription is not None:
                pause = self._poll_interval
            else:
                pause, delay = delay, min(delay * 2, self._longest_poll)
            if on_progress is not None:
                pause = min(pause, PROGRESS_INTERVAL)
            with anyio.move_on_after(pause):
                await event.wait()
            if event.is_set() and self._events.get(job_id) is event:
                del self._events[job_id]  # the next round takes a fresh one
            if self._store is not None and self._subscription is None:
                await self._subscribe()

    async def _get(self, job_id: str) -> JobRecord:
        record = await self._read(job_id)
        if record is None:
            raise JobNotFoundError(f"no job with id {job_id!r}: never enqueued here, deleted, "
                                   "or pruned after result_ttl")
        return record

    def _outcome(self, record: JobRecord) -> JobRecord:
        return cast("JobRecord", {**record, "result": self._decode(record)})

    # -- the subscription --------------------------------------------------------------------------
    async def _subscribe(self) -> None:
        """Open the subscription if it is not open and its backoff has passed; a failure is
        logged and leaves the waiters polling."""
        store = self._store
        if store is None or self._subscription is not None or self._closed:
            return
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._subscription is not None or anyio.current_time() < self._retry_at:
                return
            try:
                subscription = await store.subscribe(self._ended, self._lost)
            except DatabaseError as exc:
                self._retry_at = anyio.current_time() + self._backoff
                logger.warning("wait_for_job: no LISTEN connection (%s); polling, retrying in "
                               "%.1fs", exc, self._backoff)
                self._backoff = min(self._backoff * 2, _RESUBSCRIBE[1])
                return
            if self._closed:
                await subscription.close()
                return
            self._subscription, self._backoff = subscription, _RESUBSCRIBE[0]
            self.subscriptions += 1
            if self.subscriptions > 1:  # ends pushed while it was down are lost: read again
                self._wake_all()

    def _ended(self, ids: Sequence[str]) -> None:
        for job_id in ids:
            event = self._events.get(job_id)
            if event is not None:
                event.set()

    def _lost(self) -> None:
        if self._subscription is None:
            return
        self._subscription = None
        if not self._closed:
            logger.warning("wait_for_job: the LISTEN connection was lost; polling until it is "
                           "back")
            self._wake_all()

    def _wake_all(self) -> None:
        for event in self._events.values():
            event.set()

    async def close(self) -> None:
        """Close the subscription and wake every waiter to read again (the app's reads then
        raise ``AppClosedError``); idempotent."""
        self._closed = True
        subscription, self._subscription = self._subscription, None
        self._wake_all()
        if subscription is not None:
            await subscription.close()


async def report_progress(record: JobRecord, last: object,
                          on_progress: Callable[[Any], Any] | None) -> object:
    """Call ``on_progress(value)`` (awaited when it returns an awaitable) when the record's
    ``"progress"`` changed since ``last``; returns the value seen. Progress reaches waiters by
    polling: a waiter with ``on_progress`` reads the row at least every
    :data:`PROGRESS_INTERVAL` seconds."""
    value = record["progress"]
    if on_progress is not None and value is not None and value != last:
        outcome = on_progress(value)
        if inspect.isawaitable(outcome):
            await outcome
    return value
