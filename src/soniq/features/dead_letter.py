"""The dead-letter queue: jobs that used up their retries, kept for inspection, replay or removal.

Dead-lettered jobs stay in the one jobs table with status ``dead_letter``, keeping their id and
their ``errors`` (type, message and traceback per attempt). This module owns the rules -- input
validation, what ``older_than`` means, the export format -- and reaches storage only through
:class:`~soniq.backends.stores.DeadLetterStore`, which each backend offers as
``backend.dead_letters``.

Use it as ``app.dead_letter``::

    for job in await app.dead_letter.list_jobs(queue="emails"):
        print(job["id"], job["last_error"])
    await app.dead_letter.replay(job_id)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from soniq.errors import UnsupportedOperationError, ValidationError
from soniq.ids import is_uuid
from soniq.registry import validate_name
from soniq.serialization import dumps, to_utc, utc_now

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

    from soniq.backends.base import StorageBackend
    from soniq.backends.stores import DeadLetterStore
    from soniq.types import JobRecord

__all__ = ["DeadLetter"]

#: Jobs fetched per page while exporting.
EXPORT_PAGE_SIZE = 500


async def _nothing() -> None:
    """The default ``ready``: a backend used directly is already initialised by its owner."""


class DeadLetter:
    """Inspect, replay and remove dead-lettered jobs.

    Args:
        backend: the storage backend; it must offer ``dead_letters``
            (a :class:`~soniq.backends.stores.DeadLetterStore`).
        ready: awaited before every storage call (the app passes ``ensure_initialized``).
        wake: called with the queues that got jobs back, to wake in-process workers at once
            (backends with LISTEN also notify other processes themselves).

    Construction touches nothing; every method validates its input before any I/O.
    """

    def __init__(self, backend: StorageBackend, *,
                 ready: Callable[[], Awaitable[None]] = _nothing,
                 wake: Callable[[set[str]], None] | None = None) -> None:
        self._backend = backend
        self._ready = ready
        self._wake = wake

    def __repr__(self) -> str:
        return f"<DeadLetter backend={self._backend.name}>"

    async def _store(self) -> DeadLetterStore:
        store = self._backend.dead_letters
        if store is None:
            raise UnsupportedOperationError(
                f"the {self._backend.name} backend has no dead-letter store (backend.dead_letters);"
                " use the memory, sqlite or postgres backend, or implement DeadLetterStore"
            )
        await self._ready()
        return store

    def _woken(self, queues: Iterable[str]) -> None:
        wanted = set(queues)
        if self._wake is not None and wanted:
            self._wake(wanted)

    # -- reading ------------------------------------------------------------------------------
    async def list_jobs(self, queue: str | None = None, job_name: str | None = None,
                        since: datetime | None = None, limit: int = 100,
                        offset: int = 0) -> list[JobRecord]:
        """Dead-lettered jobs, newest dead-lettered first; ``since`` (an aware datetime) keeps
        those that finished at or after it."""
        queue, job_name, since = _filters(queue, job_name, since)
        _check_int("limit", limit, 1)
        _check_int("offset", offset, 0)
        store = await self._store()
        return await store.list_dead(queue=queue, job_name=job_name, since=since,
                                     limit=limit, offset=offset)

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record if it is dead-lettered; None otherwise (also for malformed ids)."""
        if not is_uuid(job_id):
            return None
        store = await self._store()
        return await store.get_dead(job_id)

    async def count(self, queue: str | None = None, job_name: str | None = None) -> int:
        """How many jobs are dead-lettered (optionally in one queue / of one job name)."""
        queue, job_name, _ = _filters(queue, job_name, None)
        store = await self._store()
        return await store.count_dead(queue=queue, job_name=job_name)

    async def export(self, queue: str | None = None, job_name: str | None = None,
                     since: datetime | None = None,
                     limit: int | None = None) -> AsyncIterator[str]:
        """Yield one JSON line (no newline) per dead-lettered job, newest first, with datetimes
        in ISO 8601. Reads page by page, so the queue need not fit in memory."""
        queue, job_name, since = _filters(queue, job_name, since)
        if limit is not None:
            _check_int("limit", limit, 1)
        store = await self._store()
        offset = 0
        while limit is None or offset < limit:
            size = EXPORT_PAGE_SIZE if limit is None else min(EXPORT_PAGE_SIZE, limit - offset)
            page = await store.list_dead(queue=queue, job_name=job_name, since=since,
                                         limit=size, offset=offset)
            for record in page:
                yield dumps(_jsonable(record), what=f"dead-lettered job {record['id']}")
            if len(page) < size:
                return
            offset += len(page)

    # -- changing -----------------------------------------------------------------------------
    async def replay(self, job_id: str) -> bool:
        """Queue a dead-lettered job again: same id, attempts reset to 0, due now, errors kept as
        history. False when the job does not exist or is not dead-lettered."""
        if not is_uuid(job_id):
            return False
        store = await self._store()
        queue = await store.replay(job_id)
        if queue is None:
            return False
        self._woken([queue])
        return True

    async def replay_many(self, queue: str | None = None, job_name: str | None = None,
                          since: datetime | None = None, limit: int | None = None) -> int:
        """Replay every matching dead-lettered job (newest first, at most ``limit``); how many."""
        queue, job_name, since = _filters(queue, job_name, since)
        if limit is not None:
            _check_int("limit", limit, 1)
        store = await self._store()
        replayed = await store.replay_matching(queue=queue, job_name=job_name, since=since,
                                               limit=limit)
        self._woken(queue_name for _, queue_name in replayed)
        return len(replayed)

    async def delete(self, job_id: str) -> bool:
        """Remove a dead-lettered job; False when it does not exist or is not dead-lettered."""
        if not is_uuid(job_id):
            return False
        store = await self._store()
        return await store.delete_dead(job_id)

    async def purge(self, older_than: timedelta | float | datetime | None = None) -> int:
        """Remove dead-lettered jobs that finished before ``now - older_than`` (a timedelta or
        seconds), or before ``older_than`` when it is an aware datetime; all of them when None.
        Returns how many were removed."""
        cutoff = _cutoff(older_than)
        store = await self._store()
        return await store.purge(finished_before=cutoff)


def _filters(queue: str | None, job_name: str | None,
             since: datetime | None) -> tuple[str | None, str | None, datetime | None]:
    if queue is not None:
        validate_name(queue, "queue name")
    if job_name is not None:
        validate_name(job_name, "job name")
    if since is not None and not isinstance(since, datetime):
        raise ValidationError(f"since must be a timezone-aware datetime, not {type(since).__name__}")
    return queue, job_name, to_utc(since, what="since")


def _check_int(label: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValidationError(f"{label} must be an integer >= {low}, got {value!r}")


def _cutoff(older_than: timedelta | float | datetime | None) -> datetime | None:
    if older_than is None:
        return None
    if isinstance(older_than, datetime):
        return to_utc(older_than, what="older_than")
    if isinstance(older_than, bool) or not isinstance(older_than, timedelta | int | float):
        raise ValidationError(
            "older_than must be a timedelta, a number of seconds or an aware datetime, "
            f"not {type(older_than).__name__}"
        )
    if isinstance(older_than, timedelta):
        age = older_than
    else:
        if older_than != older_than or older_than in (float("inf"), float("-inf")):
            raise ValidationError(f"older_than must be a finite number of seconds, got {older_than!r}")
        try:
            age = timedelta(seconds=older_than)
        except OverflowError:
            raise ValidationError(f"older_than is too large: {older_than!r}") from None
    if age < timedelta(0):
        raise ValidationError(f"older_than must not be negative, got {older_than!r}")
    try:
        return utc_now() - age
    except OverflowError:
        raise ValidationError(f"older_than is too large: {older_than!r}") from None


def _jsonable(record: JobRecord) -> dict[str, Any]:
    """The record with its datetimes as ISO 8601 text (everything else is JSON already)."""
    return {key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in record.items()}
