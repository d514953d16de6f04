"""The ``Soniq`` facade: owns the settings, the job registry and the storage backend.

Construction does no I/O and needs no event loop; the backend opens its connections on first use.
Several instances live side by side in one process: nothing here is global.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio

from soniq.backends import StorageBackend, resolve_backend
from soniq.backends.base import database_info
from soniq.embedding import AppWorker, running
from soniq.errors import UnsupportedOperationError
from soniq.features.awaiting import Waiting
from soniq.features.dead_letter import DeadLetter
from soniq.features.definitions import Definitions
from soniq.features.durable import durable_job
from soniq.features.logs import JobLogs
from soniq.features.metrics import Metrics
from soniq.features.queues import Queues
from soniq.features.scheduler import Scheduler, SchedulerService, Timing
from soniq.features.tracing import Tracing
from soniq.features.webhooks import Webhooks, WebhookService
from soniq.features.workflows import Workflows
from soniq.ids import is_uuid
from soniq.lifecycle import Lifecycle, State
from soniq.producer import Enqueuing, Producer
from soniq.registry import JobRegistry, validate_list_filters, validate_name
from soniq.runtime import EventDispatcher, Hooks, PayloadCodec, Service, Worker, cancel_job
from soniq.settings import SoniqSettings, load_settings

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from datetime import timedelta
    from types import TracebackType

    from soniq.features.signing import Signing
    from soniq.sync import SyncSoniq
    from soniq.types import (
        CancelOutcome,
        DatabaseInfo,
        JobRecord,
        NewJob,
        QueueStats,
    )

__all__ = ["Soniq"]

logger = logging.getLogger("soniq")

F = TypeVar("F", bound=Callable[..., Any])

class Soniq(Enqueuing):
    """Background jobs stored in your database.

    Args:
        database_url: PostgreSQL URL, or a SQLite path ending ``.db``/``.sqlite``/``.sqlite3``
            (or ``sqlite:///path``). Defaults to ``SONIQ_DATABASE_URL``, then
            ``postgresql://postgres@localhost/soniq``.
        backend: a ``StorageBackend`` instance, or ``"postgres"``, ``"sqlite"``, ``"memory"``;
            None picks one from ``database_url``.
        **settings_overrides: any :class:`~soniq.settings.SoniqSettings` field.

    Raises:
        UnknownSettingError: a keyword is not a setting (the message suggests the closest).
        ConfigurationError: a value is out of range, or the backend cannot be chosen.
    """

    def __init__(self, database_url: str | None = None, backend: StorageBackend | str | None = None,
                 **settings_overrides: Any) -> None:
        if database_url is not None:
            settings_overrides["database_url"] = database_url
        self._settings = load_settings(settings_overrides)
        self._settings.apply_logging()
        self._backend = resolve_backend(backend, self._settings.database_url, self._settings)
        self._registry = JobRegistry()
        self._lifecycle = Lifecycle(self._backend.initialize)
        self.hooks = Hooks()
        #: Job lifecycle events; features (webhooks, logs, metrics) subscribe here.
        self.events = EventDispatcher()
        #: The one enqueue path (also used by ``app.sync`` and ``soniq.contrib``).
        self.producer = Producer(self._registry, self._settings, self._backend, self.events,
                                 self._lifecycle)
        #: Loops every worker of this app runs in its task group (scheduler, webhook delivery).
        self.services: list[Service] = []
        self._dead_letter: DeadLetter | None = None
        self._definitions: Definitions | None = None
        self._queues: Queues | None = None
        self._workflows: Workflows | None = None
        self._scheduler: Scheduler | None = None
        # Every worker fires the stored schedules (one small query per tick when there are none).
        self.services.append(SchedulerService(self.scheduler))
        self._webhooks: Webhooks | None = None
        #: Sends job events to registered webhook endpoints (idle without endpoints).
        self.webhook_service = WebhookService(self._backend, self.events, self._settings)
        self.services.append(self.webhook_service)
        self._logs: JobLogs | None = None
        self._metrics: Metrics | None = None
        self._sync: SyncSoniq | None = None
        #: The waiters of :meth:`wait_for_job`: one subscription per app, opened on first wait.
        self.awaiting = Waiting(self._backend.awaits, read=self.get_job, decode=self.producer.result,
                                poll_interval=self._settings.poll_interval)
        if self._settings.capture_job_logs:
            self.logs  # noqa: B018 -- installs log capture

    def __repr__(self) -> str:
        return f"<Soniq backend={self._backend.name} jobs={len(self._registry)}>"

    # -- properties ---------------------------------------------------------------------------
    @property
    def settings(self) -> SoniqSettings:
        return self._settings

    @property
    def backend(self) -> StorageBackend:
        """The storage backend (exists from construction; connects on first use)."""
        return self._backend

    @property
    def registry(self) -> JobRegistry:
        return self._registry

    @property
    def dead_letter(self) -> DeadLetter:
        """The dead-letter queue: jobs that used up their retries (list, replay, delete, purge,
        export). Touching it opens nothing; each call initialises the app first."""
        if self._dead_letter is None:
            self._dead_letter = DeadLetter(self._backend, ready=self.ensure_initialized,
                                           wake=self.producer.wake)
        return self._dead_letter

    @property
    def definitions(self) -> Definitions:
        """Job definitions every worker stores at start (``list``, ``get``, ``versions``; see
        :mod:`soniq.features.definitions`). Touching it opens nothing."""
        if self._definitions is None:
            self._definitions = Definitions(self._backend, ready=self.ensure_initialized,
                                            heartbeat_timeout=self._settings.heartbeat_timeout)
        return self._definitions

    @property
    def queues(self) -> Queues:
        """Pause, resume and limit queues, stored and audited (:mod:`soniq.features.queues`; the
        ``queues`` setting stays ``app.settings.queues``). Touching it opens nothing."""
        if self._queues is None:
            self._queues = Queues(self._backend, ready=self.ensure_initialized)
        return self._queues

    @property
    def workflows(self) -> Workflows:
        """Read and cancel workflows and batches (:mod:`soniq.features.workflows`)."""
        if self._workflows is None:
            self._workflows = Workflows(self._backend, self.events, ready=self.ensure_initialized)
        return self._workflows

    @property
    def scheduler(self) -> Scheduler:
        """Recurring jobs stored in the database (add, pause, resume, remove, list); every worker
        fires them. Touching it opens nothing; each call initialises the app first."""
        if self._scheduler is None:
            settings = self._settings
            self._scheduler = Scheduler(
                self._backend, build_job=self._schedule_job, ready=self.ensure_initialized,
                job_names=self._schedulable_jobs, wake=self.producer.wake, interval=settings.scheduler_interval,
                misfire=settings.scheduler_misfire, grace=settings.scheduler_misfire_grace,
                error_retry_delay=settings.error_retry_delay)
        return self._scheduler

    @property
    def webhooks(self) -> Webhooks:
        """Webhook endpoints (register, list, get, unregister, rotate_secret, deliveries); every
        worker delivers to them. Touching it opens nothing; each call initialises the app first."""
        if self._webhooks is None:
            self._webhooks = Webhooks(self._backend, ready=self.ensure_initialized,
                                      settings=self._settings)
        return self._webhooks

    @property
    def codec(self) -> PayloadCodec:
        """How arguments and results are stored; encryption replaces it."""
        return self.producer.codec

    def _schedule_job(self, target: Any, args: Mapping[str, Any], queue: str | None,
                      priority: int | None) -> NewJob:
        """The job a schedule enqueues, validated like ``enqueue`` (never deduplicated)."""
        return self.producer.job(target, args, queue=queue, priority=priority, unique=False)

    def _schedulable_jobs(self) -> frozenset[str] | None:
        """The job names a schedule of this app can enqueue: the registered ones, or any name
        (None) with ``enqueue_validation='none'``."""
        if self._settings.enqueue_validation == "none":
            return None
        return frozenset(spec.name for spec in self._registry)

    @property
    def signing(self) -> Signing:
        """Encrypt/decrypt/sign/verify with ``SONIQ_SECRET_KEYS`` (see :mod:`soniq.features.signing`).

        Raises:
            ConfigurationError: no secret keys are configured.
        """
        self.producer.encrypt()
        return self.producer.signing()

    @property
    def logs(self) -> JobLogs:
        """Logs emitted inside this app's jobs (``for_job``, ``search_logs``). Touching it turns
        capture on (as ``capture_job_logs=True`` does); it opens nothing."""
        if self._logs is None:
            settings = self._settings
            self._logs = JobLogs(self._backend, ready=self.ensure_initialized,
                                 level=settings.job_log_level,
                                 flush_interval=settings.job_log_flush_interval,
                                 buffer_size=settings.job_log_buffer_size,
                                 error_retry_delay=settings.error_retry_delay)
            self.hooks.middleware.insert(0, self._logs.capture)  # outermost: sees every record
            self.services.append(self._logs.service())
            self._logs.install()
        return self._logs

    @property
    def tracing(self) -> Tracing:
        """OpenTelemetry spans (producer ``send``, consumer ``process``) for this app's enqueues
        and its workers' attempts, from the moment it is first touched; needs
        ``opentelemetry-api`` (see :mod:`soniq.features.tracing`)."""
        if self.producer.tracing is None:
            tracing = self.producer.tracing = Tracing()
            self.hooks.middleware.insert(1 if self._logs is not None else 0, tracing.process)
        return self.producer.tracing

    @property
    def metrics(self) -> Metrics:
        """In-process job counters and histograms (``snapshot()``, ``prometheus_text()``), fed
        by this app's lifecycle events from the moment it is first touched."""
        if self._metrics is None:
            self._metrics = Metrics()
            self.events.subscribe(self._metrics.record)
        return self._metrics

    @property
    def is_initialized(self) -> bool:
        return self._lifecycle.state is State.OPEN

    @property
    def is_closed(self) -> bool:
        return self._lifecycle.state is State.CLOSED

    # -- lifecycle ----------------------------------------------------------------------------
    async def ensure_initialized(self) -> None:
        """Open the backend's connections if not yet open (every async method does this itself)."""
        if self._lifecycle.state is not State.OPEN:
            await self._lifecycle.open()

    async def close(self) -> None:
        """Release connections. Calling it again does nothing."""
        if self.is_closed:
            return
        if self._logs is not None:
            await self._logs.close()  # uninstall capture, write what is buffered
        self._lifecycle.state = State.CLOSED
        await self.awaiting.close()
        if self._sync is not None:  # its own loop and pool: stop them off this loop
            await anyio.to_thread.run_sync(self._sync.close)
        with anyio.CancelScope(shield=True):
            await self._backend.close()  # idempotent; also covers use without ensure_initialized

    async def __aenter__(self) -> Soniq:
        await self.ensure_initialized()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def setup(self) -> list[str]:
        """Create the database if missing and apply pending migrations (what ``soniq setup``
        runs in a deploy step). Returns the names of the migrations applied."""
        self._lifecycle.check()
        return await self._backend.migrate()

    # -- registration -------------------------------------------------------------------------
    @overload
    def job(self, func: F, /) -> F: ...
    @overload
    def job(self, func: None = None, /, **options: Any) -> Callable[[F], F]: ...

    def job(self, func: F | None = None, /, **options: Any) -> F | Callable[[F], F]:
        """Register a function as a job: ``@app.job()`` or ``@app.job(queue="emails", retries=5)``.

        Options: ``name``, ``queue``, ``priority`` (lower runs first), ``retries`` (alias
        ``max_retries``), ``retry_delay`` (seconds, or a list per retry), ``retry_backoff``,
        ``retry_max_delay``, ``timeout`` (None inherits ``job_timeout``, 0 disables),
        ``unique`` (with ``unique_by``, ``unique_for``, ``unique_while``, ``on_conflict``,
        ``max_delay``: docs/tutorial/uniqueness.md), ``validate`` (alias ``args_model``, a pydantic model for the arguments),
        ``encrypt`` (store arguments and result encrypted with ``SONIQ_SECRET_KEYS``),
        ``concurrency_limit`` (at most N running attempts across all workers; per value of the
        argument named by ``concurrency_key`` when given) and ``ordered`` (with a
        ``concurrency_key``: one at a time per key, in enqueue order; docs/tutorial/flow-control.md).
        The function is returned unchanged, so it can still be called directly.
        """

        def decorate(fn: F) -> F:
            if self._registry.register(fn, **options).encrypt:
                self.producer.encrypt()
            return fn

        return decorate(func) if func is not None else decorate

    def durable(self, **options: Any) -> Callable[[F], F]:
        """Register an ``async def fn(ctx: soniq.DurableContext, ...)`` as a durable function:
        a job (every ``@app.job`` option applies) whose ``ctx.step`` results are saved and
        whose ``ctx.sleep`` gives the slot back (docs/tutorial/durable.md). Enqueue the
        returned function like any job."""
        return lambda fn: self.job(**options)(durable_job(fn))  # type: ignore[return-value]

    def periodic(self, *, cron: str | None = None, every: float | timedelta | None = None,
                 name: str | None = None, args: Mapping[str, Any] | None = None,
                 timezone: str = "UTC", **options: Any) -> Callable[[F], F]:
        """Register a job (like ``@app.job(name=..., **options)``) that runs on a schedule:
        ``@app.periodic(cron="0 7 * * *", name="reports.daily")`` or ``every=60``.

        The schedule is named after the job and enqueues it with ``args``. It is written to
        storage (upsert) when a worker's scheduler starts, or on ``await app.scheduler.sync()``,
        so deploying the code is enough; ``app.scheduler.pause(name)`` still applies.
        """
        Timing.parse(cron, every, timezone)  # fail at decoration, before registering anything

        def decorate(fn: F) -> F:
            job_options = dict(options) if name is None else {**options, "name": name}
            self.job(**job_options)(fn)
            spec = self._registry.spec_for(fn)
            assert spec is not None
            self.scheduler.define(spec.name, cron=cron, every=every, target=fn, args=args,
                                  timezone=timezone)
            return fn

        return decorate

    def before_job(self, hook: F) -> F:
        """Register ``hook(ctx)`` (sync or async) to run before every job."""
        self.hooks.before_job.append(hook)
        return hook

    def after_job(self, hook: F) -> F:
        """Register ``hook(ctx, result)`` to run after every job that returned."""
        self.hooks.after_job.append(hook)
        return hook

    def on_error(self, hook: F) -> F:
        """Register ``hook(ctx, exc)`` to run when a job raises (its own errors are only logged)."""
        self.hooks.on_error.append(hook)
        return hook

    def middleware(self, func: F) -> F:
        """Register ``async def mw(ctx, call_next)`` around every job; the first registered is
        the outermost. Return ``await call_next()`` (or a replacement result)."""
        self.hooks.middleware.append(func)
        return func

    # -- workers --------------------------------------------------------------------------------
    def worker(self, *, concurrency: int | None = None, queues: Sequence[str] | None = None,
               run_once: bool = False) -> Worker:
        """A worker for this app, to run inside your own task group::

            async with anyio.create_task_group() as tg:
                worker = await tg.start(app.worker(concurrency=8).run)

        ``queues=None`` takes every queue; ``concurrency=None`` uses the setting.
        """
        if queues is not None:
            if isinstance(queues, str):
                queues = [queues]
            queues = [validate_name(q, "queue name") for q in queues]
        return AppWorker(self.producer, self.ensure_initialized, backend=self._backend,
                         registry=self._registry, settings=self._settings, hooks=self.hooks,
                         events=self.events, services=self.services, concurrency=concurrency,
                         queues=queues, run_once=run_once)

    async def run_worker(self, concurrency: int | None = None, run_once: bool = False,
                         queues: Sequence[str] | None = None) -> int:
        """Run a worker until it is stopped or cancelled (with ``run_once``, until nothing is
        due). Returns how many job attempts it ran. Installs no signal handlers."""
        worker = self.worker(concurrency=concurrency, queues=queues, run_once=run_once)
        await worker.run()
        return worker.processed

    def running_worker(self, *, concurrency: int | None = None,
                       queues: Sequence[str] | None = None) -> AbstractAsyncContextManager[Worker]:
        """A worker running in a task group for the body of the block (asyncio or trio)::

            async with app.running_worker(concurrency=8) as worker:
                ...  # serve requests; enqueued jobs run here

        The block starts once the worker can claim. Leaving it normally stops claiming and lets
        running jobs finish (``shutdown_timeout``); an error or cancellation gives them back.
        """
        return running(self.worker(concurrency=concurrency, queues=queues))

    @property
    def sync(self) -> SyncSoniq:
        """Blocking ``enqueue``/``get_job``/... for sync code (Flask, Django views, scripts),
        safe from any thread; one portal loop with its own pool (see :mod:`soniq.sync`)."""
        if self._sync is None:
            from soniq.sync import SyncSoniq

            with _SYNC_LOCK:
                if self._sync is None:
                    self._sync = SyncSoniq(self)
        return self._sync

    # -- management ---------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job's full record, or None when there is no such job."""
        if not is_uuid(job_id):
            return None
        await self.ensure_initialized()
        return await self._backend.get_job(job_id)

    async def get_result(self, job_id: str) -> Any:
        """What a ``done`` job returned; None otherwise (or after ``result_ttl``)."""
        return self.producer.result(await self.get_job(job_id))

    async def wait_for_job(self, job_id: str, timeout: float | None = None, *,  # noqa: ASYNC109
                           on_progress: Callable[[Any], Any] | None = None) -> JobRecord:
        """The job's record (``get_job``'s, ``result`` decoded like ``get_result``) once it is
        ``done``, ``dead_letter`` or ``cancelled``; at once when it already is. Woken by the
        database (PostgreSQL NOTIFY, one LISTEN connection per app) or in process (memory);
        SQLite polls. ``on_progress(value)`` (sync or async) is called when the job's progress
        changes, read at least once a second. See :mod:`soniq.features.awaiting`.

        Raises:
            TimeoutError: the job had not ended after ``timeout`` seconds.
            JobNotFoundError: no such job, or it was deleted or pruned (also while waiting).
        """
        self._lifecycle.check()
        return await self.awaiting.wait(job_id, timeout, on_progress)

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a job that has not started; True when it was cancelled. A running job gets a
        cancel request instead (False: it is not cancelled yet, and may still finish first);
        :meth:`request_cancel` tells the two apart."""
        return await self.request_cancel(job_id) == "cancelled"

    async def request_cancel(self, job_id: str) -> CancelOutcome | None:
        """``"cancelled"``: the job was waiting and is now cancelled. ``"requested"``: it is
        running; its worker cancels it (at once on PostgreSQL, else at its next heartbeat) and
        it ends ``cancelled``, unless it finishes first. None: no such job, or already final."""
        if not is_uuid(job_id):
            return None
        await self.ensure_initialized()
        return await cancel_job(self._backend, self.events, job_id)

    async def delete_job(self, job_id: str) -> bool:
        """Delete a job in any state; True when it existed."""
        if not is_uuid(job_id):
            return False
        await self.ensure_initialized()
        return await self._backend.delete_job(job_id)

    async def list_jobs(self, queue: str | None = None, status: str | None = None,
                        limit: int = 100, offset: int = 0) -> list[JobRecord]:
        """Jobs, newest first, optionally filtered by queue and status."""
        validate_list_filters(queue, status, limit, offset)
        await self.ensure_initialized()
        return await self._backend.list_jobs(queue=queue, status=status, limit=limit, offset=offset)

    async def get_queue_stats(self) -> list[QueueStats]:
        """Job counts per queue and status, sorted by queue name (``[]`` when there are no jobs)."""
        await self.ensure_initialized()
        return await self._backend.queue_stats()

    async def database_info(self) -> DatabaseInfo:
        """What ``soniq doctor`` and ``soniq migrate-status`` report: server version, applied and
        pending migrations, and on PostgreSQL round trip, clock skew, pooling mode and whether
        LISTEN/NOTIFY gets through. Needs no schema (it works before ``soniq setup``).

        Raises:
            DatabaseError: the database cannot be reached.
            UnsupportedOperationError: the backend cannot be probed (memory).
        """
        self._lifecycle.check()
        probe = self._backend.probe
        if probe is None:
            raise UnsupportedOperationError(
                f"the {self._backend.name} backend has nothing to probe; use sqlite or postgres")
        return database_info(self._backend.name, await probe())


#: Guards the lazy creation of ``app.sync`` (it may first be touched from several threads).
_SYNC_LOCK = threading.Lock()
