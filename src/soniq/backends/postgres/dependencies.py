"""Jobs that wait for other jobs, on PostgreSQL: the insert of dependent jobs and the read of
their dependencies' results. What happens when a dependency ends is the database's own work:
the trigger ``soniq_settle_dependents`` (migrations 0015 and 0016) runs the fan-in protocol
after every statement that ends a job with dependents, in its transaction (see the migrations).

The insert runs in one transaction (the caller's with ``connection=``): it locks the stored
dependencies ``FOR UPDATE`` in id order -- so none ends unseen: a finish that comes after waits
for this commit and then sees the new edges; one that came before is read here as ``done`` --
marks them ``has_dependents``, decides each new job's status and writes the jobs and their
edges by binary COPY. Asyncio-native coroutines that run inside :func:`soniq.backends._bridge.call`.
"""

from __future__ import annotations

import functools
from graphlib import CycleError
from typing import TYPE_CHECKING, Any

from soniq.backends.dependencies import ordered
from soniq.backends.postgres import sql
from soniq.errors import ValidationError
from soniq.serialization import loads
from soniq.types import DependencyResult, JobStatus

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

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
        #: $1 ids: new jobs cancelled at once (a dependency had failed) end now.
        self.cancelled = f"UPDATE {n.jobs} SET finished_at = now() WHERE id = ANY ($1::uuid[])"
        #: After the COPY: wake listeners on each queue in $1 whose earliest job ($2) is due.
        self.notify_due = sql.build(n.schema).notify_due
        self.schema = n.schema
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
        order = ordered({job.id: [d for d in job.depends_on if d in new] for job in jobs})
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
    await _write_jobs(conn, s, [(job, status[job.id], waiting[job.id], job.id in depended)
                                for job in jobs])
    if edges:
        await conn.copy_records_to_table("soniq_dependencies", records=edges,
                                         columns=_EDGE_COLUMNS, schema_name=s.schema)
    return list(new)


#: The columns a COPY of new dependent jobs fills (``scheduled_at`` too when they carry a time).
_COPY_COLUMNS = ("id", "job_name", "queue", "priority", "status", "args", "max_attempts",
                 "concurrency_key", "hold", "rate_key", "waiting_on", "on_dependency_failure",
                 "has_dependents", "workflow_id", "step_name")
_EDGE_COLUMNS = ("dependency", "dependent", "satisfied")

#: A new job with what the insert decided for it: status, pending edges, has dependents.
_Row = tuple["NewJob", str, "int | None", bool]


async def _write_jobs(conn: Any, s: DependencySql, rows: list[_Row]) -> None:
    """The jobs by binary COPY (one per set of columns: with and without a time of their own),
    a job cancelled at once then given its ``finished_at`` (the database's clock), and one
    NOTIFY per queue with a job due."""
    groups: dict[bool, list[tuple[Any, ...]]] = {}
    due: dict[str, datetime | None] = {}  # queue -> its earliest run_at (None: now)
    for job, status, waiting_on, depended in rows:
        hold = _hold(job, status)
        record = (job.id, job.job_name, job.queue, job.priority, status, job.args,
                  job.max_attempts, job.concurrency_key, hold, job.rate_key, waiting_on,
                  job.on_dependency_failure if job.depends_on else None, depended,
                  job.workflow_id, job.step_name)
        timed = job.scheduled_at is not None
        groups.setdefault(timed, []).append((*record, job.scheduled_at) if timed else record)
        if status == "queued" and hold is None:
            at = due.get(job.queue, job.scheduled_at)
            due[job.queue] = (at if at is None or job.scheduled_at is None
                              else min(at, job.scheduled_at))
    for timed, records in groups.items():
        await conn.copy_records_to_table(
            "soniq_jobs", records=records, schema_name=s.schema,
            columns=(*_COPY_COLUMNS, "scheduled_at") if timed else _COPY_COLUMNS)
    cancelled = [job.id for job, status, *_ in rows if status == "cancelled"]
    if cancelled:
        await conn.execute(s.cancelled, cancelled)
    if due:
        await conn.execute(s.notify_due, list(due), list(due.values()))


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
