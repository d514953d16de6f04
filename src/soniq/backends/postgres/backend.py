"""``PostgresBackend``: the storage seam on PostgreSQL through asyncpg.

Owns the connection pool and the translation between :mod:`soniq.types` and rows; semantics
match :class:`~soniq.backends.memory.MemoryBackend`. Neighbours: SQL in :mod:`.sql`, migrations
and the schema check in :mod:`.schema`, LISTEN in :mod:`.listener`, error translation in
:mod:`.errors`, inserts in :mod:`.inserts`, housekeeping (analyze, rescue, prune, the unknown
jobs' dead letters; their own ``statement_timeout``) in :mod:`.maintenance`.

Two rules shape the code (DESIGN.md §6):

- Every driver call goes through :func:`soniq.backends._bridge.call`: a pool method
  (``call(pool.fetch, ...)``) or an asyncio-native coroutine (``_create_pool``,
  :mod:`.inserts`, :mod:`.maintenance`, :func:`.schema.migrate`, ...). Under asyncio that is a direct await;
  under trio a hop to the bridge loop.
- A pool belongs to the loop that created it, so the pool is created inside ``call`` too. Code
  that runs inside ``call`` uses asyncpg only -- no AnyIO primitives, no nested ``call`` -- because
  it may be running on the bridge loop on behalf of a trio task. Locks and timeouts live on the
  caller's side.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from soniq.backends import _bridge
from soniq.backends._bridge import call
from soniq.backends.base import StorageBackend, job_record, queue_stats_row
from soniq.backends.postgres import (
    dependencies,
    gates,
    inserts,
    listener,
    maintenance,
    pooling,
    schema,
    slots,
    sql,
    workflows,
)
from soniq.backends.postgres import pool as pool_ops
from soniq.backends.postgres import queues as pg_queues
from soniq.backends.postgres.awaiting import PostgresAwaitStore
from soniq.backends.postgres.dashboard import PostgresDashboardStore
from soniq.backends.postgres.dead_letter import PostgresDeadLetterStore
from soniq.backends.postgres.definitions import PostgresDefinitionStore
from soniq.backends.postgres.errors import Translator, redact_url, translate
from soniq.backends.postgres.events import EventLog
from soniq.backends.postgres.job_states import PostgresJobStateStore
from soniq.backends.postgres.logs import PostgresLogStore
from soniq.backends.postgres.pool import StatementPool
from soniq.backends.postgres.queues import PostgresAuditStore, PostgresQueueStore
from soniq.backends.postgres.schedules import PostgresScheduleStore
from soniq.backends.postgres.steps import PostgresStepStore
from soniq.backends.postgres.webhooks import PostgresWebhookStore
from soniq.backends.postgres.where import where
from soniq.errors import UnsupportedOperationError, ValidationError
from soniq.ids import canonical_uuid, is_uuid
from soniq.types import CancelOutcome, ClaimedJob, JobOutcome, JobRecord, NewJob, QueueStats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence
    from datetime import datetime

    from anyio.abc import TaskStatus

    from soniq.backends.postgres.changes import Statements
    from soniq.limits import RateGate
    from soniq.settings import SoniqSettings
    from soniq.types import DependencyResult, WorkerInfo

__all__ = ["LOOP_POOL_SIZE", "PostgresBackend"]

#: Connections of the worker loops' pool: a claim, a finish and a heartbeat at the same time.
LOOP_POOL_SIZE = 3

_CLOSE_TIMEOUT = 10.0


class PostgresBackend:
    """Jobs in PostgreSQL. Construction does no I/O; the pool opens on first use (or
    :meth:`initialize`), and the schema is created only by :meth:`migrate` (``soniq setup``)."""

    name = "postgres"
    supports_listen = True
    supports_transactions = True
    streams_inserts = True

    def __init__(self, url: str, settings: SoniqSettings) -> None:
        self._url = url
        self._settings = settings
        self._pool: Any = None  # asyncpg.Pool, owned by the loop that created it
        self._loop_pool: Any = None  # the worker loops' own (see _loops)
        self._open_lock: anyio.Lock | None = None
        self._errors = Translator(url)
        self._maintenance_timeout = maintenance.timeout_setting(
            settings.maintenance_statement_timeout)
        # PgBouncer transaction pooling (no statement cache) cannot hold a LISTEN session:
        # workers poll instead (DESIGN.md §4), unless listen_url names a direct connection.
        self._listen_url = settings.listen_url
        self.supports_listen = settings.statement_cache_size > 0 or self._listen_url is not None
        #: The event log (see :mod:`.events`): the statements that change jobs record their
        #: events while a reader is registered here. Both variants of those statements are
        #: written once; each call picks one by reading ``events.recording``.
        self.events = EventLog()
        # Every statement, written once for this instance's schema (db_schema; sql.build).
        self._q = q = sql.build(settings.db_schema)
        self._plain, self._logged = q.plain, q.logged
        # The feature stores (soniq.backends.stores) in this database, in the same schema.
        n = q.names
        self.dead_letters = PostgresDeadLetterStore(self._ready, self._errors, n)
        self.schedules = PostgresScheduleStore(self._ready, self._errors, q)
        self.definitions = PostgresDefinitionStore(self._ready, self._errors, n)
        self.webhooks = PostgresWebhookStore(self._ready, self._errors, self._maintenance_timeout,
                                             self.events, n)
        self.logs = PostgresLogStore(self._ready, self._errors, n)
        self.dashboard = PostgresDashboardStore(self._ready, self._errors,
                                                self._maintenance_timeout, self.queue_stats, n)
        self.queues = PostgresQueueStore(self._ready, self._errors, n)
        self.job_states = PostgresJobStateStore(self._ready, self._errors, n)
        self.steps = PostgresStepStore(self._ready, self._errors, n)
        self.audit = PostgresAuditStore(self._ready, self._errors, n)
        self.workflows = workflows.PostgresWorkflowStore(self._ready, self._errors, n,
                                                         self._maintenance_timeout)
        self.awaits = PostgresAwaitStore(self._ready, self._errors, n, url=self._listen_url or url,
            refuse_pooling="listen_url" if self._listen_url else None) if self.supports_listen else None
        self._queue_claims = pg_queues.claims(n)
        self._gates = gates.gate_sql(n)
        self._control = maintenance.control_sql(n)
        # Keys of claims that may have committed without their rows reaching us (sql.py, claim).
        self._unanswered: dict[str, list[str]] = {}
        # Leases of claimed jobs that hold a concurrency slot, until their outcome is written.
        self._limited: set[str] = set()

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        schema = self._q.names.schema
        where = redact_url(self._url) if schema is None else f"{redact_url(self._url)} {schema}"
        return f"<PostgresBackend {where} ({state})>"

    @property
    def redacted_url(self) -> str:
        """The database URL with its password replaced by ``***`` (safe to log)."""
        return redact_url(self._url)

    # -- lifecycle ------------------------------------------------------------------------------
    async def initialize(self) -> None:
        """Open the pool (idempotent) and check that every shipped migration is applied."""
        await self._ready()

    async def _ready(self) -> Any:
        """The main pool (enqueue, reads, connections lent out), opened on first use. The cheap
        check stays outside any lock."""
        pool = self._pool
        if pool is None:
            pool = await self._open(loops=False)
        return pool

    async def _loops(self) -> Any:
        """The worker loops' pool (claims, finishes, heartbeats, maintenance), opened on first
        use. Its connections plan every execution (``schema.CUSTOM_PLANS``: a claim planned while
        the table was small must not stay a Seq Scan); the main pool keeps cached generic plans,
        because planning the enqueue INSERT on every call would cost ~10% of a single enqueue."""
        pool = self._loop_pool
        if pool is None:
            pool = await self._open(loops=True)
        return pool

    async def _open(self, *, loops: bool) -> Any:
        if self._open_lock is None:
            self._open_lock = anyio.Lock()
        async with self._open_lock:
            with self._errors:
                if self._pool is None:
                    self._pool = await call(self._create_pool, main=True)
                if loops and self._loop_pool is None:
                    self._loop_pool = await call(self._create_pool, main=False)
                    if not self.supports_listen:
                        pooling.log_listen_off(self._settings.poll_interval)
            return self._loop_pool if loops else self._pool

    async def _create_pool(self, *, main: bool) -> Any:
        cache_size = self._settings.statement_cache_size
        try:
            pool = await asyncpg.create_pool(
                self._url,
                min_size=self._settings.pool_min_size if main else 1,
                max_size=self._settings.pool_max_size if main else LOOP_POOL_SIZE,
                statement_cache_size=cache_size,
                server_settings=schema.SERVER_SETTINGS,
                init=schema.plan_every_execution if cache_size and not main else None,
                reset=pool_ops.keep_session,
            )
        except Exception as exc:
            # asyncpg reports a malformed URL as a bare ValueError, only known here.
            translated = translate(exc, self._url, connecting=True)
            if translated is None:
                raise
            raise translated from exc
        if main:
            try:
                if cache_size:
                    await pooling.refuse_transaction_pooling(pool, self._url)
                await schema.check_schema(pool, self._url, self._q)
            except BaseException:
                pool.terminate()  # nothing borrowed yet; no reason to wait
                raise
        return StatementPool(pool)

    async def close(self) -> None:
        """Close the pools (idempotent). Borrowed connections get _CLOSE_TIMEOUT s to return."""
        pools = [pool for pool in (self._loop_pool, self._pool) if pool is not None]
        self._pool = self._loop_pool = None
        with self._errors:
            for pool in pools:
                with anyio.move_on_after(_CLOSE_TIMEOUT) as scope:
                    await call(pool.close)
                if scope.cancelled_caught:
                    await call(pool_ops.terminate, pool)

    # -- connections ----------------------------------------------------------------------------
    def acquire(self) -> AbstractAsyncContextManager[Any]:
        """Borrow a pooled connection: the asyncpg connection under asyncio, a
        :class:`~soniq.backends._bridge.BridgedConnection` with the same surface under trio.
        Pass it to ``enqueue(..., connection=)`` to enqueue inside its transaction."""
        return self._acquire()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Any]:
        pool = await self._ready()
        with self._errors:
            raw = await call(pool.acquire)
        try:
            yield raw if _bridge.on_asyncio() else _bridge.BridgedConnection(raw)
        finally:
            with anyio.CancelScope(shield=True):
                await call(pool_ops.give_back, pool, raw)

    # -- enqueue --------------------------------------------------------------------------------
    async def insert_jobs(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        if not jobs:
            return []
        with self._errors:
            if connection is not None:
                return await call(inserts.insert_on, _bridge.unwrap(connection), self._q, jobs)
            pool = await self._ready()
            return await call(inserts.insert_with_pool, pool, self._q, jobs)

    async def insert_workflow(self, workflow_id: str, name: str, kind: str,
                              jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        with self._errors:
            on = await self._ready() if connection is None else _bridge.unwrap(connection)
            return await call(workflows.insert, on, self._q.names, (workflow_id, name, kind),
                              jobs, pooled=connection is None)

    # -- claim and finish -----------------------------------------------------------------------
    async def claim_jobs(self, worker_id: str, queues: Sequence[str] | None, limit: int,
                         *, now: datetime | None = None, paused: frozenset[str] = frozenset(),
                         limited: frozenset[str] = frozenset(), rates: Sequence[RateGate] = (),
                         unknown: frozenset[str] = frozenset()) -> list[ClaimedJob]:
        _check_worker_id(worker_id)
        if limit <= 0 or (queues is not None and not queues):
            return []
        query, extra = self._queue_claims.pick(self._q, queues, paused | limited)
        # The keys of this worker's claims whose answer was lost (they may have committed): the
        # jobs they took are handed out now, and the keys kept until that answer arrives.
        keys = self._unanswered.pop(worker_id, [])
        try:
            with self._errors:
                pool = await self._loops()
                rows = await call(gates.claim, pool, self._q, self._gates, query, extra,
                                  worker_id, now, limit, keys, queues=queues, limited=limited,
                                  rates=rates, unknown=sorted(unknown))
        except BaseException:  # sent but unanswered (connection lost, cancelled)
            self._unanswered[worker_id] = keys
            raise
        claimed = [ClaimedJob(*row) for row in rows]  # RETURNING lists ClaimedJob's fields
        self._limited.update(job.lease_id for job in claimed if job.concurrency_key is not None)
        # RETURNING has no order; hand jobs out in claim order. Lower-case hex sorts like uuid.
        claimed.sort(key=lambda job: (job.priority, job.scheduled_at, job.id))
        return claimed

    def _sql(self) -> Statements:
        """The statements that change jobs: recording their events while the log has a reader."""
        return self._logged if self.events.recording else self._plain

    async def complete_jobs(self, outcomes: Sequence[JobOutcome],
                            *, now: datetime | None = None) -> list[str]:
        # A repeated (job, lease) keeps its first outcome, as applying them in order would (its
        # write drops the lease the rest need). One job can come with two leases -- a crash undid
        # the claim of an earlier run -- and then only the current lease can match: the row is
        # still updated once. Malformed ids can hold no lease.
        batch: dict[tuple[str, str], JobOutcome] = {}
        for outcome in outcomes:
            job_id, lease_id = canonical_uuid(outcome.job_id), canonical_uuid(outcome.lease_id)
            if job_id is not None and lease_id is not None:
                batch.setdefault((job_id, lease_id), outcome)
        if not batch:
            return []
        items = list(batch.values())
        # Jobs this backend claimed with a concurrency key: their finish and the hand-over of
        # their slots go in one transaction; any other batch stays one statement.
        leases = [lease_id for _, lease_id in batch]
        limited = not self._limited.isdisjoint(leases)
        self._limited.difference_update(leases)
        with self._errors:
            pool = await self._loops()
            rows = await call(
                slots.changing, pool, self._q.slots, self._sql().complete_jobs,
                [job_id for job_id, _ in batch], [lease_id for _, lease_id in batch],
                [o.status.value for o in items], [o.result for o in items],
                [o.error for o in items], [o.run_at for o in items],
                [o.refund_attempt for o in items], [o.expires_at for o in items], now,
                atomic=limited)
            accepted = {str(row["id"]) for row in rows}
            holds = {job_id: outcome.rate_hold for (job_id, _), outcome in batch.items()
                     if outcome.rate_hold is not None and job_id in accepted}
            if holds:  # RateLimited: its bucket is held for every worker
                await call(gates.hold_buckets, pool, self._gates, holds)
        # In input order, each job once.
        return list(dict.fromkeys(outcome.job_id for (job_id, _), outcome in batch.items()
                                  if job_id in accepted))

    # -- reading and managing -------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        if not is_uuid(job_id):
            return None
        with self._errors:
            pool = await self._ready()
            row = await call(pool.fetchrow, self._q.get_job, job_id)
        return None if row is None else job_record(row)

    async def list_jobs(self, *, queue: str | None = None, status: str | None = None,
                        limit: int = 100, offset: int = 0) -> list[JobRecord]:
        clause, params = where(("queue = {}::text", queue), ("status = {}::text", status), first=3)
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._q.list_jobs.format(where=clause), limit,
                              offset, *params)
        return [job_record(row) for row in rows]

    async def cancel_job(self, job_id: str) -> CancelOutcome | None:
        if not is_uuid(job_id):
            return None
        with self._errors:
            pool = await self._ready()
            rows = await call(slots.changing, pool, self._q.slots, self._sql().cancel_job, job_id,
                              atomic=True)
        status = rows[0]["status"] if rows else None
        return None if status is None else "cancelled" if status == "cancelled" else "requested"

    async def delete_job(self, job_id: str) -> bool:
        if not is_uuid(job_id):
            return False
        with self._errors:
            pool = await self._ready()
            return bool(await call(slots.changing, pool, self._q.slots, self._q.delete_job, job_id,
                                   atomic=True))

    async def dependency_results(self, job_id: str) -> list[DependencyResult]:
        with self._errors:
            pool = await self._loops()
            return await call(dependencies.results, pool,
                              dependencies.dependency_sql(self._q.names), job_id)

    async def queue_stats(self) -> list[QueueStats]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._q.queue_stats)
        return [queue_stats_row(row["queue"], row) for row in rows]

    # -- workers and maintenance ----------------------------------------------------------------
    async def register_worker(self, worker: WorkerInfo, *, now: datetime | None = None) -> None:
        _check_worker_id(worker.id)
        with self._errors:
            pool = await self._loops()
            await call(maintenance.register_worker, pool, self._q, worker, now,
                       self._maintenance_timeout)

    async def heartbeat(self, worker_id: str, *, now: datetime | None = None,
                        job_names: Sequence[str] = ()) -> list[str]:
        _check_worker_id(worker_id)
        with self._errors:
            pool = await self._loops()
            rows = await call(pool.fetch, self._sql().heartbeat, worker_id, now, list(job_names))
        return [str(row["id"]) for row in rows]

    async def unregister_worker(self, worker_id: str) -> None:
        if not is_uuid(worker_id):
            return
        with self._errors:
            pool = await self._loops()
            await call(pool.execute, self._q.unregister_worker, worker_id)

    async def list_workers(self) -> list[dict[str, Any]]:
        with self._errors:
            pool = await self._ready()
            rows = await call(pool.fetch, self._q.list_workers)
        return [{**dict(row), "id": str(row["id"]), "job_names": list(row["job_names"] or ())}
                for row in rows]  # the statement selects exactly list_workers' keys

    async def rescue_jobs(self, stale_after: float, *, now: datetime | None = None) -> list[str]:
        with self._errors:
            pool = await self._loops()
            return await call(maintenance.rescue, pool, self._q, self._sql().rescue_jobs,
                              stale_after, now, self._maintenance_timeout)

    async def dead_letter_unknown(self, known: Sequence[str], *, grace: float,
                                  now: datetime | None = None) -> list[str]:
        with self._errors:
            return await call(maintenance.dead_letter_unknown, await self._loops(), self._q,
                              list(known), grace, now, self._maintenance_timeout)

    async def park_job(self, job_id: str, lease_id: str, concurrency_key: str, limit: int,
                       *, now: datetime | None = None) -> bool:
        if not (is_uuid(job_id) and is_uuid(lease_id)):
            return False
        with self._errors:
            pool = await self._loops()
            return await call(slots.park_with_pool, pool, self._q.slots, job_id, lease_id,
                              concurrency_key, limit, now)

    async def reconcile_slots(self, limits: Mapping[str, int]) -> int:
        if not limits:
            return 0
        with self._errors:
            pool = await self._loops()
            return await call(slots.reconcile, pool, self._q.slots, dict(limits))

    async def prune_jobs(self, *, now: datetime | None = None,
                         result_ttl: float | None = None) -> int:
        with self._errors:
            pool = await self._loops()
            return await call(maintenance.prune, pool, self._q, now, self._maintenance_timeout,
                              result_ttl)

    async def prune_control(self, *, audit_retention: float,
                            now: datetime | None = None) -> int:
        with self._errors:
            pool = await self._loops()
            return await call(maintenance.prune_control, pool, self._control, audit_retention,
                              now, self._maintenance_timeout)

    async def claim_maintenance(self, task: str, interval: float,
                                *, now: datetime | None = None) -> bool:
        with self._errors:
            pool = await self._loops()
            return await call(pool.fetchval, self._q.claim_maintenance, task, interval,
                              now) is not None

    async def listen(self, on_notify: Callable[[str, str], None],
                     *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold a dedicated LISTEN connection (see :mod:`.listener`); never returns, raises
        :class:`~soniq.errors.DatabaseError` when the connection is lost."""
        if not self.supports_listen:
            raise UnsupportedOperationError(
                "LISTEN needs a session-pooled connection; with statement_cache_size=0 "
                "(PgBouncer transaction pooling) workers poll instead, unless listen_url is set"
            )
        url = self._listen_url or self._url
        await listener.listen(url, on_notify, channels=self._q.names.channels,
                              keepalive=self._settings.heartbeat_interval,
                              errors=Translator(url), task_status=task_status,
                              refuse_pooling="listen_url" if self._listen_url else None)

    # -- schema ---------------------------------------------------------------------------------
    async def probe(self) -> dict[str, Any]:
        """Facts for ``soniq doctor`` / ``migrate-status`` (:mod:`.probe`), on plain connections."""
        from soniq.backends.postgres.probe import probe  # only the CLI's diagnostics need it

        return await probe(self._url, self._errors, self._q.names, listen_url=self._listen_url)

    async def migrate(self) -> list[str]:
        """Create the database (and the ``db_schema``) if it does not exist, then apply pending
        migrations, each in its own transaction with its ``soniq_migrations`` row, under an
        advisory lock so concurrent runs apply each migration exactly once. Returns the labels
        applied."""
        with self._errors:
            return await call(schema.migrate, self._url, self._q)


def _check_worker_id(worker_id: str) -> None:
    if not is_uuid(worker_id):
        raise ValidationError(f"worker_id must be a UUID string, got {worker_id!r}")


# mypy checks the adapter against the seam, capabilities included.
_: type[StorageBackend] = PostgresBackend
