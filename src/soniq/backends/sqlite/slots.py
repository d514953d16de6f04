"""Concurrency slots on SQLite: the memory backend's semantics (:mod:`soniq.backends.memory.slots`)
inside the writer's ``BEGIN IMMEDIATE`` transactions. One writer at a time holds the file's write
lock, so reading a slot counter and writing it back within one transaction is safe.

Each function takes the writer connection of an open transaction.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from soniq.backends.dependencies import ENDED

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    import aiosqlite

    from soniq.types import NewJob

__all__ = ["UNPARK", "admit", "hand_over", "reconcile", "released", "take_slot"]

_ACTIVE = "SELECT active FROM soniq_slots WHERE job_name = ? AND key = ?"
_SET_ACTIVE = (
    "INSERT INTO soniq_slots (job_name, key, active) VALUES (?, ?, ?) "
    "ON CONFLICT (job_name, key) DO UPDATE SET active = excluded.active"
)
#: job_name, key, limit: take a slot if fewer than the limit are taken; a row when taken.
_TAKE = (
    "INSERT INTO soniq_slots (job_name, key, active) VALUES (?1, ?2, 1) "
    "ON CONFLICT (job_name, key) DO UPDATE SET active = active + 1 WHERE active < ?3 "
    "RETURNING active"
)
_PARKED = (
    "SELECT id FROM soniq_jobs WHERE job_name = ? AND concurrency_key = ? "
    "AND status = 'queued' AND hold = 'slot' ORDER BY id LIMIT ?"
)
#: id. Unparks a job (it took a slot).
UNPARK = "UPDATE soniq_jobs SET hold = NULL WHERE id = ?"
_GIVE_UP = (
    "UPDATE soniq_slots SET active = max(active - ?3, 0) WHERE job_name = ?1 AND key = ?2"
)
_PARKED_KEYS = (
    "SELECT DISTINCT job_name, concurrency_key FROM soniq_jobs "
    "WHERE status = 'queued' AND hold = 'slot'"
)
_HOLDERS = (
    "SELECT count(*) FROM soniq_jobs WHERE job_name = ? AND concurrency_key = ? "
    "AND concurrency_key IS NOT NULL AND hold IS NULL AND status IN ('queued', 'processing')"
)


async def admit(conn: aiosqlite.Connection, jobs: Sequence[NewJob]) -> dict[str, str | None]:
    """The ``hold`` of each limited job in ``jobs`` (by id), taking the free slots of each key in
    id order: None where a slot was taken, ``'slot'`` (parked) for the rest. The counters are
    written here; the caller inserts the rows with these holds. A job whose ``concurrency_limit``
    is unknown takes a slot only when none is taken."""
    holds: dict[str, str | None] = {}
    active: dict[tuple[str, str], int] = {}
    for job in sorted(jobs, key=lambda job: job.id):
        if job.concurrency_key is None:
            continue
        group = (job.job_name, job.concurrency_key)
        if group not in active:
            rows = list(await conn.execute_fetchall(_ACTIVE, group))
            active[group] = rows[0][0] if rows else 0
        if active[group] < (job.concurrency_limit or 1):
            active[group] += 1
            holds[job.id] = None
        else:
            holds[job.id] = "slot"
    await conn.executemany(_SET_ACTIVE, [(*group, n) for group, n in active.items()])
    return holds


async def take_slot(conn: aiosqlite.Connection, job_name: str, key: str, limit: int) -> bool:
    """Take one slot of the key if fewer than ``limit`` are taken."""
    return bool(list(await conn.execute_fetchall(_TAKE, (job_name, key, limit))))


#: The statuses after a change that free a slot held: ended, or deleted unfinished.
_FREEING = frozenset({*ENDED, "deleted"})


def released(rows: Iterable[Sequence[Any]]) -> Counter[tuple[str, str]]:
    """Slots freed by changed rows ``(job_name, concurrency_key, hold, status)`` (after the
    change; ``deleted`` for a row deleted before it finished): a limited, unparked row that
    ended."""
    return Counter((name, key) for name, key, hold, status in rows
                   if key is not None and hold is None and status in _FREEING)


async def hand_over(conn: aiosqlite.Connection, freed: Mapping[tuple[str, str], int]) -> None:
    """Give each freed slot to its key's oldest parked job, else lower the key's count."""
    for (job_name, key), count in sorted(freed.items()):
        heirs = list(await conn.execute_fetchall(_PARKED, (job_name, key, count)))
        await conn.executemany(UNPARK, heirs)
        if len(heirs) < count:
            await conn.execute(_GIVE_UP, (job_name, key, count - len(heirs)))


async def reconcile(conn: aiosqlite.Connection, limits: Mapping[str, int]) -> int:
    """For each key with parked jobs whose name is in ``limits``: recount the key's slot
    holders, unpark up to the limit in id order, write the count. How many were unparked."""
    unparked = 0
    for job_name, key in list(await conn.execute_fetchall(_PARKED_KEYS)):
        if job_name not in limits:
            continue
        [(holders,)] = list(await conn.execute_fetchall(_HOLDERS, (job_name, key)))
        free = max(limits[job_name] - holders, 0)
        heirs = list(await conn.execute_fetchall(_PARKED, (job_name, key, free))) if free else []
        await conn.executemany(UNPARK, heirs)
        unparked += len(heirs)
        await conn.execute(_SET_ACTIVE, (job_name, key, holders + len(heirs)))
    return unparked
