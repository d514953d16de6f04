"""``app.sync``: the blocking twin of the ``Soniq`` API for sync callers (Flask, Django views,
scripts, plain threads).

Every call runs on one private asyncio event loop (an AnyIO blocking portal in a daemon thread)
that lives as long as the facade, with its own storage backend and so its own connection pool:
a pool belongs to the loop that created it (DESIGN.md §6), so the facade never borrows the pool
the app uses on its own loop. Calls are safe from any number of threads; the portal serialises
nothing but the hop onto its loop, and the pool serves calls concurrently.

Validation, job options, encryption, the producer tracing span and the lifecycle events are the
app's own: the facade goes through the app's :class:`~soniq.producer.Producer` like
``app.enqueue`` and only does the storage round trip itself.

The memory backend is one in-process store, so there the facade shares the app's backend; don't
run a worker for the same memory app on another event loop while sync callers enqueue.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

import anyio
import sniffio
from anyio.from_thread import BlockingPortal

from soniq.backends import resolve_backend
from soniq.errors import AppClosedError, UnsupportedOperationError, ValidationError
from soniq.features.awaiting import Waiting
from soniq.features.queues import Queues
from soniq.features.workflows import WorkflowBuilder, batch_jobs, workflow_jobs, workflow_name
from soniq.ids import is_uuid, new_id
from soniq.producer import depending, split_options
from soniq.registry import job_kwargs, validate_list_filters
from soniq.runtime import cancel_job

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from types import TracebackType

    from soniq.app import Soniq
    from soniq.backends.base import StorageBackend
    from soniq.backends.stores import JobDefinition
    from soniq.producer import Target, When
    from soniq.types import CancelOutcome, EnqueueOptions, JobRecord, NewJob, QueueInfo, QueueStats

__all__ = ["SyncQueues", "SyncSoniq", "SyncWorkflow"]

logger = logging.getLogger("soniq.sync")

#: Backends that hold connections bound to a loop; the facade opens its own instance of these.
_POOLED = ("postgres", "sqlite")


class SyncSoniq:
    """Blocking ``enqueue``/``get_job``/... for code that is not async. Get it as ``app.sync``.

    ::

        job_id = app.sync.enqueue(send_welcome, email="ada@example.com")
        record = app.sync.get_job(job_id)

    The portal thread and the pool start on the first call; ``close()`` (or ``await
    app.close()``) stops them. Each method mirrors the async method of the same name.
    """

    def __init__(self, app: Soniq) -> None:
        self._app = app
        self._producer = app.producer
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._backend: StorageBackend | None = None
        self._owns_backend = False
        self._ready = False
        self._init_lock: anyio.Lock | None = None
        self._closed = False
        self._waiting: Waiting | None = None  # wait_for_job's, on the portal loop
        #: ``app.queues`` for sync code.
        self.queues = SyncQueues(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._portal else "idle"
        return f"<SyncSoniq {state} app={self._app!r}>"

    def __enter__(self) -> SyncSoniq:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the portal -----------------------------------------------------------------------------
    def _start(self) -> BlockingPortal:
        with self._lock:
            if self._closed or self._app.is_closed:
                raise AppClosedError("this Soniq instance (or its app.sync facade) is closed; "
                                     "create a new Soniq")
            if self._portal is not None:
                return self._portal
            app = self._app
            if app.backend.name in _POOLED:
                self._backend = resolve_backend(app.backend.name, app.settings.database_url,
                                                app.settings)
                self._owns_backend = True
            else:
                self._backend = app.backend
            started = threading.Event()
            box: dict[str, Any] = {}

            async def serve() -> None:
                self._init_lock = anyio.Lock()
                async with BlockingPortal() as portal:
                    box["portal"] = portal
                    started.set()
                    await portal.sleep_until_stopped()

            def thread_main() -> None:
                try:
                    anyio.run(serve, backend="asyncio")
                except BaseException as exc:  # surfaced to the caller below
                    box["error"] = exc
                    started.set()

            # A daemon thread: a forgotten facade must not keep the interpreter from exiting.
            thread = threading.Thread(target=thread_main, name="soniq-sync", daemon=True)
            thread.start()
            started.wait()
            if "error" in box:
                raise RuntimeError("could not start the app.sync event loop") from box["error"]
            self._portal, self._thread = box["portal"], thread
            # Close the pool politely at interpreter exit if nobody did (the thread is a daemon).
            atexit.register(_close_at_exit, weakref.ref(self))
            return self._portal

    def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        try:  # a task of a running event loop? (sniffio alone can name a loop that is not running)
            anyio.get_current_task()
        except (RuntimeError, sniffio.AsyncLibraryNotFoundError):
            pass
        else:  # blocking here would stall every other task of that event loop
            raise UnsupportedOperationError(
                "app.sync blocks, and this code runs in an event loop; use the async methods "
                "(await app.enqueue(...)) or call app.sync from a thread")
        portal = self._start()
        return portal.call(self._on_loop, fn, *args)

    async def _on_loop(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        backend = self._backend
        assert backend is not None and self._init_lock is not None
        if not self._ready:
            async with self._init_lock:
                if not self._ready:
                    await backend.initialize()
                    self._ready = True
        return await fn(backend, *args)

    def close(self) -> None:
        """Close the facade's pool and stop its thread. Calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            portal, thread, self._portal, self._thread = self._portal, self._thread, None, None
        if portal is None or thread is None:
            return
        try:
            if self._waiting is not None:
                portal.call(self._waiting.close)
            if self._owns_backend and self._backend is not None:
                portal.call(self._backend.close)
        finally:
            portal.call(portal.stop)
            thread.join(timeout=10)

    # -- enqueue --------------------------------------------------------------------------------
    def enqueue(self, target: Target, *, args: Mapping[str, Any] | None = None,
                queue: str | None = None, priority: int | None = None,
                scheduled_at: When | None = None, unique: bool | None = None,
                dedup_key: str | None = None, **kwargs: Any) -> str:
        """``app.enqueue`` for sync code (no ``connection=``: there is no sync transaction to
        join). Returns the job id."""
        options, kwargs = split_options(kwargs)
        job = self.prepare(target, job_kwargs(args, kwargs), queue=queue, priority=priority,
                           scheduled_at=scheduled_at, unique=unique, dedup_key=dedup_key,
                           options=options)
        return self.insert(depending([job], options))[0]

    def enqueue_many(self, target: Target, args_list: Sequence[Mapping[str, Any]], *,
                     queue: str | None = None, priority: int | None = None,
                     scheduled_at: When | None = None,
                     options: EnqueueOptions | None = None) -> list[str]:
        """``app.enqueue_many`` for sync code: one job per element, validated before writing."""
        jobs = self._producer.jobs(target, args_list, queue=queue, priority=priority,
                                   scheduled_at=scheduled_at, stored=self._defaults(target),
                                   options=options)
        return self.insert(list(depending(jobs, options))) if jobs else []

    def schedule(self, target: Target, run_at: When, *, args: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> str:
        """``enqueue`` to run at ``run_at`` (an aware datetime, a timedelta or seconds from now)."""
        if run_at is None:
            raise ValidationError("schedule() needs run_at; use enqueue() to run as soon as possible")
        return self.enqueue(target, args=args, scheduled_at=run_at, **kwargs)

    def workflow(self, name: str) -> SyncWorkflow:
        """``app.workflow`` for sync code: ``wf.enqueue()`` blocks and returns the id."""
        return SyncWorkflow(name, self._producer.job_name, self._enqueue_workflow)

    def _enqueue_workflow(self, wf: SyncWorkflow) -> str:
        steps = wf.plan()
        jobs = [self.prepare(step.target, step.args, queue=step.queue, priority=step.priority,
                             scheduled_at=step.scheduled_at, unique=False) for step in steps]
        workflow_id = new_id()
        self._insert_workflow(workflow_id, wf.name, "workflow",
                              workflow_jobs(workflow_id, steps, jobs))
        return workflow_id

    def enqueue_batch(self, target: Target, args_list: Sequence[Mapping[str, Any]], *,
                      on_complete: Target, on_complete_args: Mapping[str, Any] | None = None,
                      name: str | None = None, queue: str | None = None,
                      priority: int | None = None, scheduled_at: When | None = None) -> str:
        """``app.enqueue_batch`` for sync code; returns the batch's id."""
        self._producer.callback(on_complete)
        jobs = self._producer.jobs(target, args_list, queue=queue, priority=priority,
                                   scheduled_at=scheduled_at, stored=self._defaults(target))
        items = list(jobs)  # built before the callback: ids in enqueue order
        callback = self.prepare(on_complete, on_complete_args or {}, unique=False)
        workflow_id = new_id()
        self._insert_workflow(workflow_id, workflow_name(name or jobs.job_name), "batch",
                              batch_jobs(workflow_id, items, callback))
        return workflow_id

    def _insert_workflow(self, workflow_id: str, name: str, kind: str,
                         jobs: list[NewJob]) -> list[str]:
        async def insert(backend: StorageBackend, rows: Sequence[NewJob]) -> list[str]:
            return await backend.insert_workflow(workflow_id, name, kind, rows)

        def write(rows: Sequence[NewJob]) -> list[str]:
            ids: list[str] = self._call(insert, rows)
            return ids

        return self._producer.insert_blocking(jobs, write)

    def prepare(self, target: Target, args: Mapping[str, Any], *, queue: str | None = None,
                priority: int | None = None, scheduled_at: When | None = None,
                unique: bool | None = None, dedup_key: str | None = None,
                options: EnqueueOptions | None = None) -> NewJob:
        """Validate one job exactly as ``enqueue`` does and build its row without writing it;
        :meth:`insert` writes it later (e.g. when the caller's transaction commits)."""
        return self._producer.job(target, args, queue=queue, priority=priority,
                                  scheduled_at=scheduled_at, unique=unique, dedup_key=dedup_key,
                                  stored=self._defaults(target), options=options)

    def _defaults(self, target: Target) -> JobDefinition | None:
        """The stored definition an enqueue of an unregistered name uses (the producer's cache,
        else one read on the facade's loop); None for a registered job, without any I/O."""
        producer = self._producer
        name = producer.unregistered(target)
        if name is None:
            return None
        kept, stored = producer.definitions.cached(name)
        if kept:
            return stored

        async def read(backend: StorageBackend) -> JobDefinition | None:
            return await producer.defaults(name, backend)

        read_now: JobDefinition | None = self._call(read)
        return read_now

    def insert(self, jobs: Sequence[NewJob]) -> list[str]:
        """Write jobs already built (and validated) by the app; used by ``enqueue`` and by
        integrations that prepare a job first and write it later (e.g. on transaction commit)."""

        async def insert(backend: StorageBackend, rows: Sequence[NewJob]) -> list[str]:
            return await backend.insert_jobs(rows)

        def write(rows: Sequence[NewJob]) -> list[str]:
            ids: list[str] = self._call(insert, rows)
            return ids

        return self._producer.insert_blocking(jobs, write)

    # -- management -----------------------------------------------------------------------------
    def get_job(self, job_id: str) -> JobRecord | None:
        """The job's full record, or None when there is no such job."""
        if not is_uuid(job_id):
            return None

        async def get(backend: StorageBackend) -> JobRecord | None:
            return await backend.get_job(job_id)

        record: JobRecord | None = self._call(get)
        return record

    def get_result(self, job_id: str) -> Any:
        """What a ``done`` job returned; None otherwise (or after ``result_ttl``)."""
        return self._producer.result(self.get_job(job_id))

    def wait_for_job(self, job_id: str, timeout: float | None = None, *,
                     on_progress: Callable[[Any], Any] | None = None) -> JobRecord:
        """``app.wait_for_job`` for sync code: blocks the calling thread until the job ended.
        The facade has its own subscription (PostgreSQL: its own LISTEN connection, opened on
        the first wait); on memory, whose writes happen on the app's loop, it polls.
        ``on_progress`` is called on the facade's thread."""

        async def wait(backend: StorageBackend) -> JobRecord:
            if self._waiting is None:
                async def read(wanted: str) -> JobRecord | None:
                    return await backend.get_job(wanted) if is_uuid(wanted) else None

                self._waiting = Waiting(backend.awaits if self._owns_backend else None,
                                        read=read, decode=self._producer.result,
                                        poll_interval=self._app.settings.poll_interval)
            return await self._waiting.wait(job_id, timeout, on_progress)

        record: JobRecord = self._call(wait)
        return record

    def cancel_job(self, job_id: str) -> bool:
        """Cancel a job that has not started; True when it was cancelled (a running job gets a
        cancel request: False, see :meth:`request_cancel`)."""
        return self.request_cancel(job_id) == "cancelled"

    def request_cancel(self, job_id: str) -> CancelOutcome | None:
        """Like :meth:`Soniq.request_cancel`: ``"cancelled"``, ``"requested"`` or None."""
        if not is_uuid(job_id):
            return None

        async def cancel(backend: StorageBackend) -> CancelOutcome | None:
            return await cancel_job(backend, self._app.events, job_id)

        outcome: CancelOutcome | None = self._call(cancel)
        return outcome

    def delete_job(self, job_id: str) -> bool:
        """Delete a job in any state; True when it existed."""
        if not is_uuid(job_id):
            return False

        async def delete(backend: StorageBackend) -> bool:
            return await backend.delete_job(job_id)

        return bool(self._call(delete))

    def list_jobs(self, queue: str | None = None, status: str | None = None, limit: int = 100,
                  offset: int = 0) -> list[JobRecord]:
        """Jobs, newest first, optionally filtered by queue and status."""
        validate_list_filters(queue, status, limit, offset)

        async def list_(backend: StorageBackend) -> list[JobRecord]:
            return await backend.list_jobs(queue=queue, status=status, limit=limit, offset=offset)

        records: list[JobRecord] = self._call(list_)
        return records

    def get_queue_stats(self) -> list[QueueStats]:
        """Job counts per queue and status, sorted by queue name."""

        async def stats(backend: StorageBackend) -> list[QueueStats]:
            return await backend.queue_stats()

        result: list[QueueStats] = self._call(stats)
        return result


class SyncWorkflow(WorkflowBuilder):
    """``app.sync.workflow(name)``: ``add`` steps, then ``enqueue()`` (blocking)."""

    def __init__(self, name: str, job_name: Callable[[Any], str],
                 submit: Callable[[SyncWorkflow], str]) -> None:
        super().__init__(name, job_name)
        self._submit = submit

    def enqueue(self) -> str:
        """Write every step in one transaction; the workflow's id (see ``Workflow.enqueue``)."""
        return self._submit(self)


class SyncQueues:
    """``app.queues`` for sync code (``app.sync.queues``): the same methods, blocking."""

    def __init__(self, facade: SyncSoniq) -> None:
        self._facade = facade

    def _run(self, fn: Callable[[Queues], Awaitable[Any]]) -> Any:
        async def call(backend: StorageBackend) -> Any:
            return await fn(Queues(backend, ready=_nothing))

        return self._facade._call(call)

    def list(self) -> list[QueueInfo]:
        """Every known queue (one with jobs or a stored setting), by name."""
        found: list[QueueInfo] = self._run(lambda q: q.list())
        return found

    def pause(self, name: str, *, actor: str | None = None, client: str | None = None) -> bool:
        """Stop every worker from claiming jobs of the queue; True when it was not paused."""
        return bool(self._run(lambda q: q.pause(name, actor=actor, client=client)))

    def resume(self, name: str, *, actor: str | None = None, client: str | None = None) -> bool:
        """Let workers claim from the queue again; True when it was paused."""
        return bool(self._run(lambda q: q.resume(name, actor=actor, client=client)))

    def set_concurrency_limit(self, name: str, limit: int | None, *, actor: str | None = None,
                              client: str | None = None) -> bool:
        """Store the queue's concurrency limit (None: none); True when it changed."""
        return bool(self._run(lambda q: q.set_concurrency_limit(name, limit, actor=actor,
                                                                client=client)))

    def set_rate_limit(self, name: str, rate: str | None, *, actor: str | None = None,
                       client: str | None = None) -> bool:
        """Store the queue's rate limit (``"20/s"``; None: none); True when it changed."""
        return bool(self._run(lambda q: q.set_rate_limit(name, rate, actor=actor,
                                                         client=client)))


async def _nothing() -> None:
    """The facade's backend is initialised by :meth:`SyncSoniq._on_loop`."""


def _close_at_exit(ref: weakref.ref[SyncSoniq]) -> None:
    facade = ref()
    if facade is not None:
        try:
            facade.close()
        except Exception:  # the interpreter is going away; nothing to report to
            logger.debug("app.sync could not close at exit", exc_info=True)
