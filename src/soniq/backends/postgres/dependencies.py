"""Jobs that wait for other jobs, on PostgreSQL: the insert of dependent jobs and the read of
their dependencies' results. What happens when a dependency ends is the database's own work:
the trigger ``soniq_settle_dependents`` of migration 0015 runs the fan-in protocol after every
statement that ends a job with dependents, in its transaction (see the migration).

The insert runs in one transaction (the caller's with ``connection=``): it locks the stored
dependencies ``FOR UPDATE`` in id order -- so none ends unseen: a finish that comes after waits
for this commit and then sees the new edges; one that came before is read here as ``done`` --
marks them ``has_dependents``, decides each new job's status and writes the jobs and their
edges. Asyncio-native coroutines that run inside :func:`soniq.backends._bridge.call`.
"""

from __future__ import annotations

import functools
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any

from soniq.errors import ValidationError
from soniq.serialization import loads
from soniq.types import DependencyResult, JobStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from soniq.backends.postgres.names import Names
    from soniq.types import NewJob

__all__ = ["DependencySql", "dependency_sql", "has_dependencies", "insert", "results"]

_FAILED = frozenset({JobStatus.DEAD_LETTER.value, JobStatus.CANCELLED.value})


class DependencySql:
    """The statements of dependencies for one schema (:func:`dependency_sql`)."""

    def __init__(self, n: Names) -> None:
        #: $1 ids. The stored dependencies, locked in id order, with their status.
        self.lock = (f"SELECT id::text, status FROM {n.jobs} WHERE id = ANY ($1::uuid[]) "
                     "ORDER BY id FOR UPDATE")
        #: $1 ids: they have dependents now (their end runs the fan-in trigger).
        self.mark = (f"UPDATE {n.jobs} SET has_dependents = true "
                     "WHERE id = ANY ($1::uuid[]) AND NOT has_dependents")
        #: The new jobs, parallel arrays; due queued ones wake their queue.
        self.insert_jobs = f"""
WITH inserted AS (
    INSERT INTO {n.jobs} (id, job_name, queue, priority, status, args, max_attempts,
                          scheduled_at, finished_at, concurrency_key, hold, rate_key,
                          waiting_on, on_dependency_failure, has_dependents, workflow_id,
                          step_name)
    SELECT new.id, new.job_name, new.queue, new.priority, new.status, new.args::jsonb,
           new.max_attempts, COALESCE(new.scheduled_at, now()),
           CASE WHEN new.status = 'cancelled' THEN now() END, new.concurrency_key, new.hold,
           new.rate_key, new.waiting_on, new.on_dependency_failure, new.has_dependents,
           new.workflow_id, new.step_name
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::text[], $6::text[],
                $7::integer[], $8::timestamptz[], $9::text[], $10::text[], $11::text[],
                $12::integer[], $13::text[], $14::boolean[], $15::uuid[], $16::text[])
        AS new (id, job_name, queue, priority, status, args, max_attempts, scheduled_at,
                concurrency_key, hold, rate_key, waiting_on, on_dependency_failure,
                has_dependents, workflow_id, step_name)
    RETURNING queue, status, scheduled_at, hold
)
SELECT count(pg_notify('{n.jobs_channel}', due.queue))
FROM (SELECT DISTINCT queue FROM inserted
      WHERE status = 'queued' AND hold IS NULL AND scheduled_at <= now()) AS due
"""
        #: $1 dependencies, $2 dependents, $3 satisfied.
        self.insert_edges = (
            f"INSERT INTO {n.dependencies} (dependency, dependent, satisfied) "
            "SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::boolean[])")
        #: $1 id: its dependencies with their results, in the order they were given.
        self.results = f"""
SELECT j.id::text, j.job_name, j.step_name, j.status, j.result::text
FROM {n.dependencies} AS d JOIN {n.jobs} AS j ON j.id = d.dependency
WHERE d.dependent = $1::uuid
ORDER BY j.id
"""


dependency_sql = functools.cache(DependencySql)


def has_dependencies(jobs: Sequence[NewJob]) -> bool:
    """Whether ``jobs`` go in through :func:`insert` (dependencies or workflow steps)."""
    return any(job.depends_on or job.workflow_id is not None for job in jobs)


async def insert(conn: Any, s: DependencySql, jobs: Sequence[NewJob]) -> list[str]:
    """Insert ``jobs`` with their dependencies in the caller's transaction; their ids.

    Raises:
        ValidationError: a dependency that does not exist, a cycle among the new jobs, or a
            dependent job with a dedup key -- before anything is written.
    """
    new = {job.id: job for job in jobs}
    for job in jobs:
        if job.depends_on and job.dedup_key is not None:
            raise ValidationError(f"job {job.id} has a dedup key (unique=True or dedup_key) and "
                                  "dependencies; a job that waits cannot be unique")
    try:
        order = list(TopologicalSorter(
            {job.id: [d for d in job.depends_on if d in new] for job in jobs}).static_order())
    except CycleError as exc:
        raise ValidationError(f"the jobs depend on each other in a cycle: {exc.args[1]}") from None
    stored_ids = sorted({d for job in jobs for d in job.depends_on} - new.keys())
    stored = {row["id"]: row["status"] for row in await conn.fetch(s.lock, stored_ids)}
    missing = [d for d in stored_ids if d not in stored]
    if missing:
        raise ValidationError(f"depends_on names job(s) that do not exist (never enqueued, or "
                              f"pruned): {', '.join(missing)}")
    status: dict[str, str] = {}
    waiting: dict[str, int | None] = {}
    edges: list[tuple[str, str, bool]] = []
    for job_id in order:  # dependencies first: a new one cancelled at once cancels its own
        job = new[job_id]
        pending, cancelled = 0, False
        for dep in job.depends_on:
            state = stored.get(dep) or status[dep]
            satisfied = state == JobStatus.DONE or (
                state in _FAILED and job.on_dependency_failure == "run")
            cancelled |= state in _FAILED and job.on_dependency_failure == "cancel"
            pending += not satisfied
            edges.append((dep, job_id, satisfied))
        waiting[job_id] = pending if job.depends_on else None
        status[job_id] = ("cancelled" if cancelled else "waiting" if pending else "queued")
    depended = {dep for job in jobs for dep in job.depends_on}
    marked = [d for d in stored_ids if stored[d] != JobStatus.DONE]
    if marked:
        await conn.execute(s.mark, marked)
    await conn.fetchval(
        s.insert_jobs, list(new), [j.job_name for j in jobs], [j.queue for j in jobs],
        [j.priority for j in jobs], [status[j.id] for j in jobs], [j.args for j in jobs],
        [j.max_attempts for j in jobs], [j.scheduled_at for j in jobs],
        [j.concurrency_key for j in jobs], [_hold(j, status[j.id]) for j in jobs],
        [j.rate_key for j in jobs], [waiting[j.id] for j in jobs],
        [j.on_dependency_failure if j.depends_on else None for j in jobs],
        [j.id in depended for j in jobs], [j.workflow_id for j in jobs],
        [j.step_name for j in jobs])
    if edges:
        await conn.execute(s.insert_edges, *(list(column) for column in zip(*edges, strict=True)))
    return list(new)


def _hold(job: NewJob, status: str) -> str | None:
    """A limited job that waits goes in parked, holding no slot (a hand-over or the
    reconciliation gives it one once it is released); a rate-limited one waits for its bucket."""
    if job.concurrency_key is not None and (job.depends_on or status != "queued"):
        return "slot"
    return "rate" if job.rate_key is not None else None


async def results(pool: Any, s: DependencySql, job_id: str) -> list[DependencyResult]:
    """The dependencies of ``job_id`` with their results (JSON-decoded), in id order."""
    rows = await pool.fetch(s.results, job_id)
    return [DependencyResult(id=row["id"], job_name=row["job_name"], step_name=row["step_name"],
                             status=JobStatus(row["status"]),
                             result=None if row["result"] is None else loads(row["result"]))
            for row in rows]
