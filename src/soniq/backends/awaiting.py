"""The store protocol that pushes the end of awaited jobs, offered by a backend as
``backend.awaits`` (None where ends are not pushed: SQLite, and PostgreSQL without a LISTEN
session, which poll). ``app.wait_for_job`` (:mod:`soniq.features.awaiting`) is its one user.

A waiter first :meth:`~AwaitStore.mark`\\ s the job (PostgreSQL: the ``awaited`` column,
migration 0018), then reads it again: a job that ended between the first read and the mark is
seen by that read, every later end is pushed. Ends of jobs nobody marked push nothing. An end
is pushed once the change is committed: a job reaching ``done``, ``dead_letter`` or
``cancelled``, or deleted before it ended. A push names ids only; the waiter reads the row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = ["AWAITED_CHANNEL", "IDS_PER_PAYLOAD", "AwaitStore", "Subscription", "payloads"]

#: The logical channel of the pushes (payload: job ids separated by spaces).
AWAITED_CHANNEL = "soniq_awaited"
#: Ids per payload: 100 UUIDs and their separators are 3,700 bytes, well within NOTIFY's 8,000.
IDS_PER_PAYLOAD = 100


def payloads(ids: Iterable[str]) -> list[str]:
    """``ids`` as payloads of at most :data:`IDS_PER_PAYLOAD` ids each (what the PostgreSQL
    trigger of migration 0018 sends; the memory backend sends the same)."""
    found = list(ids)
    return [" ".join(found[i:i + IDS_PER_PAYLOAD]) for i in range(0, len(found), IDS_PER_PAYLOAD)]


class Subscription(Protocol):
    """An open subscription to pushed ends; :meth:`close` ends it (idempotent)."""

    async def close(self) -> None: ...


@runtime_checkable
class AwaitStore(Protocol):
    """Pushes the end of the jobs marked as awaited."""

    async def mark(self, job_id: str) -> None:
        """Flag the job as awaited (nothing happens for an unknown id or a job that ended)."""
        ...

    async def subscribe(self, on_ended: Callable[[Sequence[str]], None],
                        on_lost: Callable[[], None]) -> Subscription:
        """Call ``on_ended(ids)`` in the caller's event loop for every push until closed; one
        connection (PostgreSQL: a LISTEN session on ``listen_url`` when set) however many jobs
        are awaited. ``on_lost()`` when the subscription broke (pushes sent meanwhile are lost:
        subscribe again, and read what ended). Raises :class:`~soniq.errors.DatabaseError` when
        it cannot be opened."""
        ...
