"""``SqliteBackend``: the storage protocol over one SQLite file, with the semantics of
:mod:`soniq.backends.memory`.

This module owns what each operation does; :mod:`.database` owns the connections, schema,
transactions, the trio bridge and error translation; :mod:`.sql` owns the statements and the
stored formats. Timestamps are TEXT, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (fixed width, so text
order is time order), converted to aware datetimes when read; ``args``, ``result``, ``errors``
and a worker's ``queues`` are JSON text.

Each public method hands a private coroutine to :meth:`SqliteDatabase.run`, which runs it on the
loop that owns the connections (the bridge loop under trio).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio

from soniq.backends.base import (
    STATUSES,
    StorageBackend,
    no_connections,
    queue_stats_row,
    refuse_connection,
    unknown_job_error,
    worker_lost_error,
)
from soniq.backends.keys import plan
from soniq.backends.sqlite import dependencies, gates, slots, sql
from soniq.backends.sqlite import keys as unique_keys
from soniq.backends.sqlite.control import SqliteAuditStore, SqliteQueueStore
from soniq.backends.sqlite.dashboard import SqliteDashboardStore
from soniq.backends.sqlite.database import SqliteDatabase
from soniq.backends.sqlite.dead_letter import SqliteDeadLetterStore
from soniq.backends.sqlite.definitions import SqliteDefinitionStore
from soniq.backends.sqlite.job_states import SqliteJobStateStore
from soniq.backends.sqlite.logs import SqliteLogStore
from soniq.backends.sqlite.schedules import SqliteScheduleStore
from soniq.backends.sqlite.steps import SqliteStepStore
from soniq.backends.sqlite.webhooks import SqliteWebhookStore
from soniq.backends.sqlite.where import where
from soniq.backends.sqlite.workflows import INSERT_WORKFLOW, SqliteWorkflowStore
from soniq.errors import UnsupportedOperationError
from soniq.limits import LONGEST_PERIOD
from soniq.serialization import dumps, loads, utc_now
from soniq.types import (
    CancelOutcome,
    ClaimedJob,
    JobOutcome,
    JobRecord,
    NewJob,
    QueueStats,
    WorkerInfo,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from datetime import datetime

    from anyio.abc import TaskStatus

    from soniq.limits import RateGate
    from soniq.types import DependencyResult

__all__ = ["SqliteBackend"]


class SqliteBackend:
    """Jobs in a SQLite file: embedded, single-host, no setup step (the schema is created on
    first use).

    Args:
        path: the database file (created if missing; its directory must exist), or
            ``":memory:"`` for a private in-memory database.
        busy_timeout: seconds a write waits for another process's write lock before failing.
    """

    name = "sqlite"
    supports_listen = False
    #: Ends are not pushed: ``wait_for_job`` polls with backoff.
    awaits = None
    supports_transactions = False
    streams_inserts = False

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self._db = SqliteDatabase(path, busy_timeout=busy_timeout)
        # The feature stores (soniq.backends.stores) in this file.
        self.dead_letters = SqliteDeadLetterStore(self._db)
        self.schedules = SqliteScheduleStore(self._db)
        self.webhooks = SqliteWebhookStore(self._db)
        self.logs = SqliteLogStore(self._db)
        self.dashboard = SqliteDashboardStore(self._db, self.queue_stats)
        self.definitions = SqliteDefinitionStore(self._db)
        self.queues = SqliteQueueStore(self._db)
        self.audit = SqliteAuditStore(self._db)
        self.workflows = SqliteWorkflowStore(self._db)
        self.job_states = SqliteJobStateStore(self._db)
        self.steps = SqliteStepStore(self._db)

    def __repr__(self) -> str:
        return f"<SqliteBackend path={self._db.path!r}>"

    @property
    def path(self) -> str:
        return self._db.path

    # -- lifecycle ----------------------------------------------------------------------------
    async def initialize(self) -> None:
        await self._db.run(_nothing)

    async def migrate(self) -> list[str]:
        return await self._db.migrate()

    async def probe(self) -> dict[str, Any]:
        """Facts for ``soniq doctor`` / ``migrate-status``: the applied migrations (the file and
        its schema are created on first use, as always on SQLite)."""
        rows = await self._db.run(
            self._db.read, "SELECT version, name FROM soniq_migrations ORDER BY version", ())
        return {"server_version": f"SQLite {sqlite3.sqlite_version}",
                "applied_migrations": [f"{int(version):04d}_{name}" for version, name in rows]}

    async def close(self) -> None:
        await self._db.close()

    def acquire(self) -> Any:
        return no_connections(self.name)

    # -- enqueue ------------------------------------------------------------------------------
    async def insert_jobs(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        if connection is not None:
            refuse_connection(self.name)
        if not jobs:
            return []
        return await self._db.run(self._insert_jobs, jobs)

    async def insert_workflow(self, workflow_id: str, name: str, kind: str,
                              jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        if connection is not None:
            refuse_connection(self.name)
        return await self._db.run(self._insert_jobs, jobs, (workflow_id, name, kind))

    async def _insert_jobs(self, jobs: Sequence[NewJob],
                           workflow: tuple[str, str, str] | None = None) -> list[str]:
        """The jobs (and the row of the ``workflow`` they are the steps of) in one transaction."""
        clock = utc_now()
        now = sql.to_db(clock)
        keys = list(dict.fromkeys(job.dedup_key for job in jobs if job.dedup_key is not None))
        decided = None
        async with self._db.transaction() as conn:
            if keys:  # resolved against the stored keys first (soniq.backends.keys)
                decided = plan(jobs, await unique_keys.standing(conn, keys), clock)
                jobs = decided.insert
                await unique_keys.write(conn, decided, now)
            await dependencies.check(conn, jobs)
            # A limited job that waits is stored parked, without a slot.
            limited = [job for job in jobs
                       if job.concurrency_key is not None and not job.depends_on]
            holds = await slots.admit(conn, limited) if limited else {}
            holds.update((job.id, "slot") for job in jobs
                          if job.depends_on and job.concurrency_key is not None)
            await conn.executemany(sql.INSERT_JOB, [
                sql.insert_params(job, now, holds.get(job.id), dedup_key=job.dedup_key)
                for job in jobs])
            dependents = [job for job in jobs if job.depends_on]
            if dependents:
                limits = {job.id: job.concurrency_limit or 1 for job in dependents}
                for job_id, name, key in await dependencies.link(conn, dependents, now):
                    if key is not None and await slots.take_slot(conn, name, key, limits[job_id]):
                        await conn.execute(slots.UNPARK, (job_id,))
            if workflow is not None:
                await conn.execute(INSERT_WORKFLOW, (*workflow, now))
        return [job.id for job in jobs] if decided is None else decided.ids

    # -- reading and managing -----------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        if not isinstance(job_id, str):
            return None
        rows = await self._db.run(self._db.read, f"{sql.JOB_SELECT} WHERE id = ?", (job_id,))
        return sql.job_row(rows[0]) if rows else None

    async def list_jobs(self, *, queue: str | None = None, status: str | None = None,
                        limit: int = 100, offset: int = 0) -> list[JobRecord]:
        clause, params = where(("queue = ?", queue), ("status = ?", status))
        rows = await self._db.run(
            self._db.read, f"{sql.JOB_SELECT}{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset))
        return [sql.job_row(row) for row in rows]

    async def cancel_job(self, job_id: str) -> CancelOutcome | None:
        if not isinstance(job_id, str):
            return None
        now = sql.to_db(utc_now())
        rows = await self._db.run(self._changing_slots, sql.CANCEL, (now, now, job_id), now=now)
        return None if not rows else "cancelled" if rows[0][0] == "cancelled" else "requested"

    async def delete_job(self, job_id: str) -> bool:
        if not isinstance(job_id, str):
            return False
        return bool(await self._db.run(self._changing_slots, sql.DELETE, (job_id,),
                                       now=sql.to_db(utc_now())))

    async def dependency_results(self, job_id: str) -> list[DependencyResult]:
        if not isinstance(job_id, str):
            return []
        return await dependencies.results(self._db, job_id)

    async def queue_stats(self) -> list[QueueStats]:
        rows = await self._db.run(self._db.read, sql.QUEUE_STATS, ())
        return [queue_stats_row(queue, dict(zip(STATUSES, counts, strict=True)))
                for queue, *counts in rows]

    # -- claim and finish ---------------------------------------------------------------------
    async def claim_jobs(self, worker_id: str, queues: Sequence[str] | None, limit: int,
                         *, now: datetime | None = None,
                         paused: frozenset[str] = frozenset(),
                         limited: frozenset[str] = frozenset(),
                         rates: Sequence[RateGate] = (),
                         unknown: frozenset[str] = frozenset()) -> list[ClaimedJob]:
        # ``paused`` is not needed: the claim reads soniq_queues inside its BEGIN IMMEDIATE.
        if limit <= 0 or (queues is not None and not queues):
            return []
        wanted = None if queues is None else list(dict.fromkeys(queues))
        rows = await self._db.run(self._claim, worker_id, wanted, limit, now, limited, rates,
                                  sorted(unknown))
        claimed = [_claimed(row) for row in rows]
        # RETURNING comes in no promised order; hand jobs out in claim order.
        claimed.sort(key=lambda job: (job.priority, job.scheduled_at, job.id))
        return claimed

    async def _claim(self, worker_id: str, wanted: list[str] | None, limit: int,
                     now: datetime | None, limited: frozenset[str],
                     rates: Sequence[RateGate], unknown: list[str]) -> list[Any]:
        """Inside one ``BEGIN IMMEDIATE`` (the write lock is taken before anything is read, so
        settings, counts and buckets are never stale): the gated queues' and rate-limited jobs'
        claims, then the plain claim with the rest. The time is read once the lock is held, so
        claims' times (and the buckets' refills) follow the order the claims really happened."""
        async with self._db.transaction() as conn:
            now = now or utc_now()
            at = sql.to_db(now)
            rows = (await gates.claim(conn, worker_id, wanted, limit, now, limited, rates,
                                      unknown) if limited or rates else [])
            if len(rows) < limit:
                statement = sql.claim_sql(None if wanted is None else len(wanted), len(unknown))
                rows += await conn.execute_fetchall(statement, (
                    worker_id, at, at, at, *(wanted or ()), *unknown, limit - len(rows)))
            return rows

    async def complete_jobs(self, outcomes: Sequence[JobOutcome],
                            *, now: datetime | None = None) -> list[str]:
        payload = _outcome_payload(outcomes)
        if not payload:
            return []
        params = {"now": sql.to_db(now or utc_now()), "outcomes": json.dumps(payload)}
        holds: dict[str, datetime] = {}
        for outcome in outcomes:
            if outcome.rate_hold is not None:
                holds[outcome.job_id] = max(outcome.rate_hold,
                                            holds.get(outcome.job_id, outcome.rate_hold))
        rows = await self._db.run(self._changing_slots, sql.COMPLETE, params, holds,
                                  now=params["now"])
        accepted = {row[0] for row in rows}
        # In input order, each id once (the UPDATE touches a row at most once).
        return list(dict.fromkeys(entry["id"] for entry in payload if entry["id"] in accepted))

    async def _changing_slots(self, statement: str, params: Sequence[Any] | dict[str, Any],
                              holds: Mapping[str, datetime] | None = None, *,
                              now: str) -> list[Any]:
        """A statement that may end jobs (its rows end with ``sql``'s ending columns), and what
        follows in the same transaction (:meth:`_ended`); with ``holds`` (job id -> until; rows
        of ``sql.COMPLETE``), the rate holds of the accepted outcomes too."""
        async with self._db.transaction() as conn:
            rows = list(await conn.execute_fetchall(statement, params))
            await _ended(conn, rows, now)
            if holds:
                await gates.hold(conn, rows, holds)
            return rows

    async def park_job(self, job_id: str, lease_id: str, concurrency_key: str, limit: int,
                       *, now: datetime | None = None) -> bool:
        return await self._db.run(self._park_job, job_id, lease_id, concurrency_key, limit,
                                  sql.to_db(now or utc_now()))

    async def _park_job(self, job_id: str, lease_id: str, key: str, limit: int,
                        now: str) -> bool:
        async with self._db.transaction() as conn:
            rows = list(await conn.execute_fetchall(sql.PARK, (job_id, lease_id, key, now)))
            if rows and await slots.take_slot(conn, rows[0][0], key, limit):
                await conn.execute("UPDATE soniq_jobs SET hold = NULL WHERE id = ?", (job_id,))
        return bool(rows)

    async def reconcile_slots(self, limits: Mapping[str, int]) -> int:
        return await self._db.run(self._reconcile_slots, dict(limits))

    async def _reconcile_slots(self, limits: Mapping[str, int]) -> int:
        async with self._db.transaction() as conn:
            return await slots.reconcile(conn, limits)

    # -- workers and maintenance --------------------------------------------------------------
    async def register_worker(self, worker: WorkerInfo, *, now: datetime | None = None) -> None:
        queues = None if worker.queues is None else dumps(list(worker.queues), what="queues")
        await self._db.run(self._db.write, sql.REGISTER_WORKER, (
            worker.id, worker.hostname, worker.pid, queues, worker.concurrency,
            sql.to_db(now or utc_now()), dumps(list(worker.job_names), what="job names")))

    async def heartbeat(self, worker_id: str, *, now: datetime | None = None,
                        job_names: Sequence[str] = ()) -> list[str]:
        return await self._db.run(self._heartbeat, worker_id, sql.to_db(now or utc_now()),
                                  dumps(list(job_names), what="job names"))

    async def _heartbeat(self, worker_id: str, now: str, job_names: str) -> list[str]:
        await self._db.write(sql.HEARTBEAT, (worker_id, now, job_names))
        return [job_id for (job_id,) in await self._db.read(sql.CANCEL_REQUESTS, (worker_id,))]

    async def unregister_worker(self, worker_id: str) -> None:
        await self._db.run(self._db.write, sql.UNREGISTER_WORKER, (worker_id,))

    async def list_workers(self) -> list[dict[str, Any]]:
        rows = await self._db.run(self._db.read, sql.LIST_WORKERS, ())
        return [
            {"id": worker_id, "hostname": hostname, "pid": pid, "queues": loads(queues),
             "concurrency": concurrency, "started_at": sql.from_db(started_at),
             "last_heartbeat": sql.from_db(last_heartbeat), "job_names": _names(job_names)}
            for (worker_id, hostname, pid, queues, concurrency, started_at, last_heartbeat,
                 job_names) in rows
        ]

    async def rescue_jobs(self, stale_after: float, *, now: datetime | None = None) -> list[str]:
        return await self._db.run(self._rescue_jobs, stale_after, now or utc_now())

    async def _rescue_jobs(self, stale_after: float, now: datetime) -> list[str]:
        cutoff = sql.to_db(now - timedelta(seconds=stale_after))
        async with self._db.transaction() as conn:
            lost = [
                {"id": job_id, "error": dumps(worker_lost_error(worker_id, attempts, now))}
                for job_id, worker_id, attempts
                in await conn.execute_fetchall(sql.LOST_JOBS, (cutoff,))
            ]
            rescued: list[str] = []
            if lost:
                rows = list(await conn.execute_fetchall(
                    sql.RESCUE, {"now": sql.to_db(now), "lost": json.dumps(lost)}))
                rescued = sorted(row[0] for row in rows)
                await _ended(conn, rows, sql.to_db(now))
            await conn.execute_fetchall(sql.REMOVE_SILENT_WORKERS, (cutoff,))
        return rescued

    async def dead_letter_unknown(self, known: Sequence[str], *, grace: float,
                                  now: datetime | None = None) -> list[str]:
        return await self._db.run(self._dead_letter_unknown, list(known), grace, now or utc_now())

    async def _dead_letter_unknown(self, known: list[str], grace: float,
                                   now: datetime) -> list[str]:
        cutoff = sql.to_db(now - timedelta(seconds=grace))
        async with self._db.transaction() as conn:
            found = await conn.execute_fetchall(sql.UNKNOWN_JOBS, (cutoff, json.dumps(known)))
            ended = [{"id": job_id, "error": dumps(unknown_job_error(name, attempts, grace, now))}
                     for job_id, name, attempts in found]
            if not ended:
                return []
            rows = list(await conn.execute_fetchall(
                sql.DEAD_LETTER_UNKNOWN, {"now": sql.to_db(now), "ended": json.dumps(ended)}))
            await _ended(conn, rows, sql.to_db(now))
        return sorted(row[0] for row in rows)

    async def prune_jobs(self, *, now: datetime | None = None,
                         result_ttl: float | None = None) -> int:
        now = now or utc_now()
        pruned = await self._db.run(self._prune, sql.PRUNE, sql.to_db(now))
        if result_ttl is not None:
            pruned += await self._db.run(self._prune, sql.PRUNE_CANCELLED,
                                         sql.to_db(now - timedelta(seconds=result_ttl)))
        return pruned

    async def prune_control(self, *, audit_retention: float,
                            now: datetime | None = None) -> int:
        now = now or utc_now()
        stale = now - timedelta(seconds=LONGEST_PERIOD)
        pruned = (await self._db.run(self._prune, sql.PRUNE_SLOTS)
                  + await self._db.run(self._prune, sql.PRUNE_BUCKETS, sql.to_db(now),
                                       sql.to_db(stale))
                  + await self._db.run(self._prune, unique_keys.PRUNE_KEYS, sql.to_db(now)))
        if audit_retention:
            pruned += await self._db.run(self._prune, sql.PRUNE_AUDIT,
                                         sql.to_db(now - timedelta(seconds=audit_retention)))
        return pruned

    async def _prune(self, statement: str, *params: str) -> int:
        return await self._db.prune(statement, *params)

    async def claim_maintenance(self, task: str, interval: float,
                                *, now: datetime | None = None) -> bool:
        now = now or utc_now()
        cutoff = now - timedelta(seconds=interval)
        rows = await self._db.run(self._db.write, sql.CLAIM_MAINTENANCE,
                                  (task, sql.to_db(now), sql.to_db(cutoff)))
        return bool(rows)

    async def listen(self, on_notify: Callable[[str, str], None],
                     *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        raise UnsupportedOperationError(
            "the sqlite backend has no LISTEN/NOTIFY (supports_listen is False): workers poll"
        )


async def _ended(conn: Any, rows: Sequence[Sequence[Any]], now: str) -> None:
    """After a statement that may end jobs (rows ending with ``job_name, concurrency_key, hold,
    status, id, has_dependents``): hand their freed slots over, then settle their dependents."""
    freed = slots.released(row[-6:-2] for row in rows)
    if freed:
        await slots.hand_over(conn, freed)
    await dependencies.ended(conn, (row[-3:] for row in rows), now)


async def _nothing() -> None:
    """What ``initialize`` runs once the database is open and migrated."""


def _outcome_payload(outcomes: Iterable[JobOutcome]) -> list[dict[str, Any]]:
    """The JSON rows ``COMPLETE`` joins against. A repeated (job, lease) keeps its first outcome,
    as applying them in order would: the first one releases the lease."""
    seen: set[tuple[str, str]] = set()
    payload = []
    for outcome in outcomes:
        key = (outcome.job_id, outcome.lease_id)
        if key in seen:
            continue
        seen.add(key)
        payload.append({
            "id": outcome.job_id,
            "lease_id": outcome.lease_id,
            "status": outcome.status.value,
            "result": outcome.result,
            "error": outcome.error,
            "run_at": None if outcome.run_at is None else sql.to_db(outcome.run_at),
            "refund": 1 if outcome.refund_attempt else 0,
            "expires_at": None if outcome.expires_at is None else sql.to_db(outcome.expires_at),
        })
    return payload


def _claimed(row: Sequence[Any]) -> ClaimedJob:
    values = dict(zip(sql.CLAIMED_COLUMNS, row, strict=True))
    values["scheduled_at"] = sql.from_db(values["scheduled_at"])
    values["created_at"] = sql.from_db(values["created_at"])
    values["has_dependencies"] = values["has_dependencies"] is not None  # waiting_on
    return ClaimedJob(**values)


def _names(text: str) -> list[str]:
    """A worker row's ``job_names`` (JSON text); a value written by hand that is not a list of
    names reads as none."""
    try:
        names = loads(text)
    except (ValueError, TypeError, RecursionError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


# mypy checks the adapter against the seam, capabilities included.
_: type[StorageBackend] = SqliteBackend
