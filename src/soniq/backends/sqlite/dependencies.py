"""Dependencies on SQLite: the memory backend's semantics
(:mod:`soniq.backends.memory.dependencies`) inside the writer's ``BEGIN IMMEDIATE``
transactions, over ``soniq_dependencies`` (one row per edge) and the jobs' ``waiting_on``,
``on_dependency_failure`` and ``has_dependents``. The write lock is held throughout, so no
dependency ends unseen while an insert adds its edges.

Each function but :func:`results` takes the writer connection of an open transaction.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from soniq.backends.dependencies import ENDED, check_found, edges_of, stored_dependencies
from soniq.serialization import loads
from soniq.types import DependencyResult, JobStatus

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import aiosqlite

    from soniq.backends.sqlite.database import SqliteDatabase
    from soniq.types import NewJob

__all__ = ["check", "ended", "link", "results"]

_IDS = "SELECT value FROM json_each(?)"
_FOUND = f"SELECT id FROM soniq_jobs WHERE id IN ({_IDS})"
_ADD_EDGE = "INSERT OR IGNORE INTO soniq_dependencies (dependency, dependent) VALUES (?, ?)"
#: ids (JSON). Marks the dependencies and returns those that have already ended.
_MARK = f"""
UPDATE soniq_jobs SET has_dependents = 1 WHERE id IN ({_IDS})
RETURNING id, status
"""
#: ended job id, now. Cancels its waiting 'cancel' dependents over unsatisfied edges, theirs, ...
_DOOM = """
WITH RECURSIVE doomed (id) AS (
    SELECT d.dependent FROM soniq_dependencies AS d JOIN soniq_jobs AS w ON w.id = d.dependent
    WHERE d.dependency = ?1 AND NOT d.satisfied
      AND w.status = 'waiting' AND w.on_dependency_failure = 'cancel'
    UNION
    SELECT d.dependent FROM doomed
    JOIN soniq_dependencies AS d ON d.dependency = doomed.id
    JOIN soniq_jobs AS w ON w.id = d.dependent
    WHERE NOT d.satisfied AND w.status = 'waiting' AND w.on_dependency_failure = 'cancel'
)
UPDATE soniq_jobs SET status = 'cancelled', finished_at = ?2, updated_at = ?2, dedup_key = NULL
WHERE status = 'waiting' AND id IN (SELECT id FROM doomed)
RETURNING id
"""
#: ended job id, failed (0/1). Satisfies its unsatisfied edges to waiting dependents (failed:
#: 'run' ones only); returns their dependents.
_SATISFY = """
UPDATE soniq_dependencies SET satisfied = 1
WHERE dependency = ?1 AND NOT satisfied AND EXISTS (
    SELECT 1 FROM soniq_jobs AS w WHERE w.id = soniq_dependencies.dependent
    AND w.status = 'waiting' AND (NOT ?2 OR w.on_dependency_failure = 'run'))
RETURNING dependent
"""
#: [[dependent, edges satisfied], ...] (JSON), now. Counts them off; at zero, released.
_COUNT_OFF = """
UPDATE soniq_jobs SET
    waiting_on = soniq_jobs.waiting_on - c.n,
    status = CASE WHEN soniq_jobs.waiting_on - c.n <= 0 THEN 'queued' ELSE 'waiting' END,
    updated_at = ?2
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS n
      FROM json_each(?1)) AS c
WHERE soniq_jobs.id = c.id AND soniq_jobs.status = 'waiting'
RETURNING soniq_jobs.id, soniq_jobs.status, soniq_jobs.job_name, soniq_jobs.concurrency_key
"""
#: dependent. Its stored dependencies (no order is stored: by id, which is creation order).
_RESULTS = """
SELECT j.id, j.job_name, j.step_name, j.status, j.result
FROM soniq_dependencies AS d JOIN soniq_jobs AS j ON j.id = d.dependency
WHERE d.dependent = ? ORDER BY d.dependency
"""


async def check(conn: aiosqlite.Connection, jobs: Sequence[NewJob]) -> None:
    """Refuse ``jobs`` (:class:`~soniq.errors.ValidationError`, nothing written) when a
    dependency is neither stored nor one of them."""
    wanted = stored_dependencies(jobs)
    if wanted:
        found = await conn.execute_fetchall(_FOUND, (json.dumps(wanted),))
        check_found(wanted, {job_id for (job_id,) in found})


async def link(conn: aiosqlite.Connection, jobs: Sequence[NewJob],
               now: str) -> list[tuple[str, str, str | None]]:
    """The edges of ``jobs`` (inserted just now, ``waiting``); then the protocol for their
    dependencies that have already ended. Returns the jobs it released, ``(id, job_name,
    concurrency_key)`` (the caller admits them like new rows)."""
    await conn.executemany(_ADD_EDGE, [(dep, job.id) for job in jobs for dep in edges_of(job)])
    deps = list(dict.fromkeys(dep for job in jobs for dep in job.depends_on))
    marked = await conn.execute_fetchall(_MARK, (json.dumps(deps),))
    done = [(job_id, status) for job_id, status in marked if status in ENDED]
    return await _settle(conn, done, now) if done else []


async def ended(conn: aiosqlite.Connection, rows: Iterable[Sequence[Any]], now: str) -> None:
    """The protocol for changed rows ``(status, id, has_dependents)`` (after the change;
    ``deleted``: deleted unfinished) whose job has dependents and ended. A released limited
    dependent stays parked (a hand-over or the reconciliation gives it a slot)."""
    done = [(job_id, status) for status, job_id, has_dependents in rows
            if has_dependents and (status in ENDED or status == "deleted")]
    if done:
        await _settle(conn, done, now)


async def _settle(conn: aiosqlite.Connection, done: Sequence[tuple[str, str]],
                  now: str) -> list[tuple[str, str, str | None]]:
    """Settle the dependents of the ended jobs ``(id, status)``: cancel, satisfy, count off.
    Returns the released ones (id, job_name, concurrency_key)."""
    satisfied: Counter[str] = Counter()
    for job_id, status in done:
        failed = status != JobStatus.DONE
        ended_ids = [job_id]
        if failed:  # the cancelled ones' own 'run' dependents are satisfied too
            ended_ids += [row[0] for row in await conn.execute_fetchall(_DOOM, (job_id, now))]
        for dep in ended_ids:
            for (dependent,) in await conn.execute_fetchall(_SATISFY, (dep, int(failed))):
                satisfied[dependent] += 1
    if not satisfied:
        return []
    rows = await conn.execute_fetchall(_COUNT_OFF, (json.dumps(list(satisfied.items())), now))
    return [(job_id, name, key) for job_id, status, name, key in rows if status == "queued"]


async def results(db: SqliteDatabase, job_id: str) -> list[DependencyResult]:
    """The stored dependencies of ``job_id`` with their results (one read)."""
    rows = await db.run(db.read, _RESULTS, (job_id,))
    return [DependencyResult(id=dep, job_name=name, step_name=step, status=JobStatus(status),
                             result=loads(result) if status == "done" and result is not None
                             else None)
            for dep, name, step, status, result in rows]
