"""Queue control: ``app.queues`` (``list``, ``pause``, ``resume``, ``set_concurrency_limit``,
``set_rate_limit``).

Settings live in the database (``backend.queues``, :class:`~soniq.backends.control.QueueStore`)
and survive restarts; every change is written together with its audit row
(``backend.audit``, shown by the dashboard) and logged to ``soniq.audit``. Input is validated
before anything is written.

A paused queue is skipped by every worker's claim (the claim statement reads the stored pauses,
so a worker with an old view still skips it); jobs already running finish, and enqueueing still
works. Workers also keep the pauses they last read (``soniq.runtime.fetcher``): reloaded on
each poll and, on PostgreSQL, within about a second of a change (NOTIFY on ``soniq_queues``), so a
worker can claim without walking a paused queue's backlog. A queue's concurrency and rate limits
are validated, stored, listed and audited here and enforced in every claim (ARCHITECTURE.md,
"Rate limits and queue limits").

(``app.queues`` is this namespace; the ``queues`` *setting*, which queues a worker takes jobs
from, stays ``app.settings.queues``.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from soniq.backends.base import STATUSES
from soniq.errors import UnsupportedOperationError, ValidationError
from soniq.limits import parse_rate
from soniq.registry import validate_name
from soniq.serialization import utc_now
from soniq.types import AuditEntry, QueueInfo

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Iterable

    from soniq.backends.base import StorageBackend
    from soniq.backends.control import QueueField, QueueSetting, QueueStore, QueueValue
    from soniq.types import QueueStats

__all__ = ["DEFAULT_ACTOR", "Queues", "audit_logger", "check_concurrency_limit",
           "check_rate_limit", "log_audit", "queue_infos"]

audit_logger = logging.getLogger("soniq.audit")

#: Who a change is recorded as when the caller names no ``actor``.
DEFAULT_ACTOR = "api"
_MAX_ACTOR = 200


def check_concurrency_limit(limit: object) -> int | None:
    """``limit`` if it is None or an int >= 1; else :class:`ValidationError` naming it."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError(f"concurrency limit must be an integer >= 1 or None, got {limit!r}")
    return limit


def check_rate_limit(rate: object) -> str | None:
    """``rate`` as ``"N/s"``, ``"N/m"`` or ``"N/h"`` (N >= 1), or None; else
    :class:`ValidationError` naming it."""
    if rate is None:
        return None
    parsed = parse_rate(rate)
    if parsed is None:
        raise ValidationError(f"rate limit must look like 20/s, 600/m or 1000/h (a count >= 1 "
                              f"per s, m or h) or be None, got {rate!r}")
    return str(parsed)


def _check_actor(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_ACTOR:
        raise ValidationError(f"{what} must be non-empty text of at most {_MAX_ACTOR} "
                              f"characters, got {value!r}")
    return value


def log_audit(entry: AuditEntry) -> None:
    """Log a recorded change to ``soniq.audit`` at INFO (WARNING when refused)."""
    level = logging.WARNING if entry.outcome == "denied" else logging.INFO
    audit_logger.log(level, "%s by %s from %s on %s: %s%s", entry.action, entry.actor,
                     entry.client, ",".join(entry.targets) or "-", entry.outcome,
                     f" ({entry.detail})" if entry.detail else "")


def queue_infos(settings: Iterable[QueueSetting],
                stats: Iterable[QueueStats]) -> builtins.list[QueueInfo]:
    """One :class:`QueueInfo` per queue named in either ``settings`` or ``stats``, by name."""
    by_name = {s.name: s for s in settings}
    counts = {q["queue"]: q for q in stats}
    found = []
    for name in sorted(by_name.keys() | counts.keys()):
        setting, count = by_name.get(name), counts.get(name)
        found.append(QueueInfo(
            name=name, paused=setting is not None and setting.paused,
            concurrency_limit=None if setting is None else setting.concurrency_limit,
            rate_limit=None if setting is None else setting.rate_limit,
            **({} if count is None else {status: count[status]  # type: ignore[literal-required]
                                         for status in ("total", *STATUSES)})))
    return found


class Queues:
    """Pause, resume and limit queues. Touching it opens nothing; each call initialises the app
    first."""

    def __init__(self, backend: StorageBackend, *,
                 ready: Callable[[], Awaitable[None]]) -> None:
        self._backend = backend
        self._ready = ready

    def __repr__(self) -> str:
        return f"<Queues backend={self._backend.name}>"

    async def _store(self) -> QueueStore:
        store = self._backend.queues
        if store is None:
            raise UnsupportedOperationError(
                f"the {self._backend.name} backend stores no queue settings (backend.queues); "
                "use the memory, sqlite or postgres backend, or implement QueueStore")
        await self._ready()
        return store

    async def list(self) -> builtins.list[QueueInfo]:
        """Every known queue (one with jobs or a stored setting), by name."""
        store = await self._store()
        return queue_infos(await store.list(), await self._backend.queue_stats())

    async def pause(self, name: str, *, actor: str | None = None,
                    client: str | None = None) -> bool:
        """Stop every worker from claiming jobs of queue ``name`` (running jobs finish; enqueue
        still works). A queue with no jobs yet can be paused. True when it was not paused."""
        return await self._set(name, "paused", True, "queue.pause", actor, client)

    async def resume(self, name: str, *, actor: str | None = None,
                     client: str | None = None) -> bool:
        """Let workers claim from queue ``name`` again. True when it was paused."""
        return await self._set(name, "paused", False, "queue.resume", actor, client)

    async def set_concurrency_limit(self, name: str, limit: int | None, *,
                                    actor: str | None = None, client: str | None = None) -> bool:
        """Store the most jobs of queue ``name`` to run at once across all workers (None: no
        limit). True when it changed."""
        value = check_concurrency_limit(limit)
        return await self._set(name, "concurrency_limit", value, "queue.concurrency_limit",
                               actor, client, detail=f"limit={value}")

    async def set_rate_limit(self, name: str, rate: str | None, *, actor: str | None = None,
                             client: str | None = None) -> bool:
        """Store the most jobs of queue ``name`` to start per second, minute or hour (``"20/s"``,
        ``"600/m"``, ``"1000/h"``; None: no limit). True when it changed."""
        value = check_rate_limit(rate)
        return await self._set(name, "rate_limit", value, "queue.rate_limit", actor, client,
                               detail=f"rate={value}")

    async def _set(self, name: str, field: QueueField, value: QueueValue, action: str,
                   actor: str | None, client: str | None, *, detail: str | None = None) -> bool:
        validate_name(name, "queue name")
        who = _check_actor(DEFAULT_ACTOR if actor is None else actor, "actor")
        where = None if client is None else _check_actor(client, "client")
        store = await self._store()
        entry = AuditEntry(at=utc_now(), actor=who, client=where, action=action,
                           targets=(name,), outcome="ok", detail=detail)
        changed = await store.set(name, field, value, audit=entry)
        log_audit(AuditEntry(at=entry.at, actor=who, client=where, action=action,
                             targets=(name,), outcome="ok" if changed else "not_applied",
                             detail=detail))
        return changed
