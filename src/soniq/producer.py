"""The producer path: every job that ``app.enqueue``/``enqueue_many``, ``app.sync`` and the
framework integrations write goes through one :class:`Producer`, owned by the app
(``app.producer``).

It builds rows with :class:`~soniq.registry.JobBuilder` (validation, job options, the payload
codec, which encrypts ``encrypt=True`` jobs), writes them inside the producer tracing span, then
wakes this process's workers and emits the ``enqueued`` events; it also decodes results on the way
back. Callers on another event loop (``app.sync``) build rows here too and hand their own write to
:meth:`Producer.insert_blocking`, so both paths share every step but the storage round trip.

A job enqueued by name (a :class:`~soniq.registry.TaskRef`, or a string with
``enqueue_validation='none'``) that this app has not registered takes its defaults (queue,
priority, max attempts, uniqueness, encryption) from the name's stored definition: callers ask
:meth:`Producer.unregistered` (no I/O) and, for such a name, ``await`` :meth:`Producer.defaults`
(cached for ``definitions_cache_ttl`` seconds, so possibly stale: see
:mod:`soniq.features.definitions`) and pass it to :meth:`Producer.job` / :meth:`Producer.jobs`.
Per-call options and a ``TaskRef``'s ``default_queue`` still win. A registered job reads nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from soniq.errors import (
    ConfigurationError,
    JobArgumentsError,
    UnknownJobError,
    UnsupportedOperationError,
    ValidationError,
)
from soniq.features.definitions import DefinitionCache
from soniq.features.workflows import Step, Workflow, batch_jobs, workflow_jobs, workflow_name
from soniq.ids import canonical_uuid, new_id, new_ids
from soniq.lifecycle import State
from soniq.registry import JobBuilder, TaskRef, job_kwargs, validate_name
from soniq.runtime import JobEvent, JsonCodec
from soniq.serialization import utc_now
from soniq.types import DEPENDENCY_FAILURES, EnqueueOptions, JobStatus, JobStream

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from soniq.backends import StorageBackend
    from soniq.backends.stores import DefinitionStore, JobDefinition
    from soniq.features.signing import EncryptingCodec, Signing
    from soniq.features.tracing import Tracing
    from soniq.lifecycle import Lifecycle
    from soniq.registry import JobRegistry
    from soniq.runtime import EventDispatcher, PayloadCodec, Worker
    from soniq.settings import SoniqSettings
    from soniq.types import JobRecord, NewJob

__all__ = ["Enqueuing", "Producer", "Target", "When", "depending", "split_options"]

#: When a job may run: an aware datetime, a timedelta or seconds from now.
When = datetime | timedelta | float | int
#: What an enqueue names: a registered function, a job name or a :class:`TaskRef`.
Target = Callable[..., Any] | str | TaskRef


class Producer:
    """The app's one enqueue path (see the module docstring). Not user API: ``Soniq``,
    ``app.sync`` and ``soniq.contrib`` call it; users call those."""

    def __init__(self, registry: JobRegistry, settings: SoniqSettings, backend: StorageBackend,
                 events: EventDispatcher, lifecycle: Lifecycle) -> None:
        self._registry = registry
        self._settings = settings
        self._backend = backend
        self._events = events
        self._lifecycle = lifecycle
        #: How arguments and results are stored; :meth:`encrypt` replaces it.
        self.codec: PayloadCodec = JsonCodec()
        #: Makes the producer span once ``app.tracing`` is touched.
        self.tracing: Tracing | None = None
        #: This app's workers running on its event loop: an enqueue wakes them at once.
        self.workers: set[Worker] = set()
        self._encrypting: EncryptingCodec | None = None
        self._signing: Signing | None = None
        #: Stored definitions of names enqueued without a registration here (tests set its clock).
        self.definitions = DefinitionCache(settings.definitions_cache_ttl)

    # -- rows -----------------------------------------------------------------------------------
    def unregistered(self, target: Target) -> str | None:
        """The job name whose stored definition an enqueue of ``target`` reads first: a
        :class:`TaskRef`, or a name under ``enqueue_validation='none'``, not registered here.
        None otherwise (no lookup; strict validation refuses an unregistered string anyway)."""
        if isinstance(target, TaskRef):
            name = target.name
        elif isinstance(target, str) and self._settings.enqueue_validation == "none":
            name = target
        else:
            return None
        return None if name in self._registry else validate_name(name, "job name")

    async def defaults(self, name: str, backend: StorageBackend | None = None
                       ) -> JobDefinition | None:
        """The stored definition of ``name`` (see :meth:`unregistered`), from the cache or read
        with ``backend`` (an open one: ``app.sync``'s), else with the app's, opened if needed."""
        async def store() -> DefinitionStore | None:
            if backend is not None:
                return backend.definitions
            self._lifecycle.check()
            if self._lifecycle.state is not State.OPEN:
                await self._lifecycle.open()
            return self._backend.definitions

        return await self.definitions.get(name, store)

    async def build(self, target: Target, args: Mapping[str, Any], *, queue: str | None = None,
                    priority: int | None = None, scheduled_at: When | None = None,
                    unique: bool | None = None, dedup_key: str | None = None,
                    options: EnqueueOptions | None = None) -> NewJob:
        """:meth:`job` with the stored defaults of an unregistered name read first."""
        name = self.unregistered(target)
        stored = None if name is None else await self.defaults(name)
        return self.job(target, args, queue=queue, priority=priority, scheduled_at=scheduled_at,
                        unique=unique, dedup_key=dedup_key, stored=stored, options=options)

    async def build_steps(self, steps: Sequence[Step]) -> list[NewJob]:
        """:meth:`build` of each workflow step (never unique), the steps that share a target
        and options sharing one builder (what validating those options costs, once)."""
        builders: dict[tuple[int, str | None, int | None, When | None], JobBuilder] = {}
        jobs = []
        for job_id, step in zip(new_ids(len(steps)), steps, strict=True):
            key = (id(step.target), step.queue, step.priority, step.scheduled_at)
            builder = builders.get(key)
            if builder is None:
                name = self.unregistered(step.target)
                stored = None if name is None else await self.defaults(name)
                builder = builders[key] = self._builder(
                    step.target, step.queue, step.priority, step.scheduled_at, False, None,
                    stored, many=False)
            jobs.append(builder(job_id, step.args))
        return jobs

    def job_name(self, target: Target) -> str:
        """The job name ``target`` enqueues (a workflow step's default name)."""
        return self._registry.resolve(target, strict=False)[1]

    def callback(self, target: Target) -> Target:
        """``target`` if it is a job registered here (a batch's ``on_complete``).

        Raises:
            UnknownJobError: it is not.
        """
        if self._registry.resolve(target, strict=True)[0] is None:
            raise UnknownJobError(f"on_complete must be a job registered on this app, got "
                                  f"{target!r}")
        return target

    def job(self, target: Target, args: Mapping[str, Any], *, queue: str | None = None,
            priority: int | None = None, scheduled_at: When | None = None,
            unique: bool | None = None, dedup_key: str | None = None,
            stored: JobDefinition | None = None, options: EnqueueOptions | None = None) -> NewJob:
        """One validated row, as ``enqueue`` writes it (nothing is written here); ``stored``:
        :meth:`defaults` of an unregistered name; ``options``: the call's (uniqueness)."""
        return self._builder(target, queue, priority, scheduled_at, unique, dedup_key, stored,
                             many=False, options=options).one(args)

    async def build_many(self, target: Target, args_list: Sequence[Mapping[str, Any]], *,
                         queue: str | None = None, priority: int | None = None,
                         scheduled_at: When | None = None,
                         options: EnqueueOptions | None = None) -> JobStream:
        """:meth:`jobs` with the stored defaults of an unregistered name read first."""
        name = self.unregistered(target)
        stored = None if name is None else await self.defaults(name)
        return self.jobs(target, args_list, queue=queue, priority=priority,
                         scheduled_at=scheduled_at, stored=stored, options=options)

    def jobs(self, target: Target, args_list: Sequence[Mapping[str, Any]], *,
             queue: str | None = None, priority: int | None = None,
             scheduled_at: When | None = None, stored: JobDefinition | None = None,
             options: EnqueueOptions | None = None) -> JobStream:
        """The rows of ``enqueue_many``, each element validated as its row is read (``list()``
        the stream to check them all)."""
        if isinstance(args_list, str | bytes | Mapping) or not isinstance(args_list, Sequence):
            raise JobArgumentsError("args_list must be a list of dicts, one per job")
        return self._builder(target, queue, priority, scheduled_at, None, None, stored,
                             many=True, options=options).stream(args_list)

    def _builder(self, target: Target, queue: str | None, priority: int | None,
                 scheduled_at: When | None, unique: bool | None, dedup_key: str | None,
                 stored: JobDefinition | None, *, many: bool,
                 options: EnqueueOptions | None = None) -> JobBuilder:
        """Validate what the jobs of one call share."""
        self._lifecycle.check()
        encode: Callable[[str, str], str] = self.codec.encode_args
        if stored is not None and stored.encrypt and stored.name not in self._registry:
            encode = self._sealing(stored.name)
        return JobBuilder(self._registry, self._settings, target, queue=queue, priority=priority,
                          scheduled_at=scheduled_at, unique=unique, dedup_key=dedup_key,
                          many=many, encode=encode, keyed_digest=self._keyed_digest,
                          stored=stored, call=unique_options(options))

    def _sealing(self, name: str) -> Callable[[str, str], str]:
        """The encoder of a job not registered here that its workers registered encrypted: never
        plaintext, so without keys this is an error."""
        if not self._settings.secret_keys:
            raise ConfigurationError(
                f"job {name!r} is stored with encrypt=True by the workers that run it, and this "
                "app has no secret keys to encrypt its arguments with; set SONIQ_SECRET_KEYS to "
                "the workers' keys (or register the job here)")
        self.encrypt()
        sealer, codec = self._encrypting, self.codec
        if sealer is None:  # encrypt() set it
            raise AssertionError("no encrypting codec")
        return lambda job_name, text: sealer.seal(codec.encode_args(job_name, text))

    def _keyed_digest(self, key: str) -> str:
        return self.signing().digest(key)

    # -- writes ---------------------------------------------------------------------------------
    async def insert(self, jobs: Sequence[NewJob], connection: Any = None) -> list[str]:
        """Write ``jobs`` with the app's backend (in ``connection``'s transaction if given) and
        return their ids. A :class:`JobStream` is streamed only where a failure cannot hurt:
        never into the caller's transaction."""
        if type(jobs) is JobStream and (connection is not None  # not isinstance: an ABC check
                                        or not self._backend.streams_inserts or jobs.keyed):
            jobs = list(jobs)  # every element validated before anything is written
        rows = jobs
        return await self._write(jobs, connection, lambda: self._backend.insert_jobs(
            rows, connection=connection))

    async def insert_workflow(self, workflow_id: str, name: str, kind: str,
                              jobs: Sequence[NewJob], connection: Any = None) -> list[str]:
        """:meth:`insert` of a workflow's (or batch's) steps, with its row."""
        return await self._write(jobs, connection, lambda: self._backend.insert_workflow(
            workflow_id, name, kind, jobs, connection=connection))

    async def _write(self, jobs: Sequence[NewJob], connection: Any,
                     write: Callable[[], Awaitable[list[str]]]) -> list[str]:
        if connection is not None and not self._backend.supports_transactions:
            raise UnsupportedOperationError(
                f"enqueue(connection=...) joins your database transaction, which the "
                f"{self._backend.name} backend cannot do; use PostgreSQL"
            )
        if self._lifecycle.state is not State.OPEN:
            await self._lifecycle.open()
        with self._span(jobs):
            ids = await write()
        if self.workers and connection is None:
            self.wake({job.queue for job in jobs})
        self._inserted(jobs)
        return ids

    def insert_blocking(self, jobs: Sequence[NewJob],
                        write: Callable[[Sequence[NewJob]], list[str]]) -> list[str]:
        """:meth:`insert` for a blocking caller whose ``write(jobs)`` does the storage round trip
        on its own event loop (``app.sync``); the span and the events are the same. Workers on the
        app's loop are not woken from here (their poll or LISTEN picks the jobs up)."""
        with self._span(jobs):
            ids = write(jobs)
        self._inserted(jobs)
        return ids

    def _span(self, jobs: Sequence[NewJob]) -> AbstractContextManager[Any]:
        if self.tracing is None:
            return nullcontext()
        if type(jobs) is JobStream:  # reading it here would build every job before the write
            return self.tracing.send(jobs.queue, jobs.job_name, len(jobs))
        return self.tracing.send(jobs[0].queue, jobs[0].job_name, len(jobs), jobs[0].id)

    def _inserted(self, jobs: Sequence[NewJob]) -> None:
        # Subscribers buffer under a lock or the GIL: safe from any thread.
        if self._events.wants("enqueued"):
            now = utc_now()
            for job in jobs:
                self._events.emit(JobEvent("enqueued", job.id, job.job_name, job.queue, 0, now))

    def wake(self, queues: set[str]) -> None:
        """Tell this app's local workers that ``queues`` have new jobs."""
        for worker in self.workers:
            for queue in queues:
                worker.wake(queue)

    # -- payloads -------------------------------------------------------------------------------
    def signing(self) -> Signing:
        """The app's :class:`~soniq.features.signing.Signing` (``SONIQ_SECRET_KEYS``), built on
        first use.

        Raises:
            ConfigurationError: no secret keys are configured.
        """
        if self._signing is None:
            from soniq.features.signing import Signing  # cryptography loads only when used

            self._signing = Signing(self._settings.secret_keys)
        return self._signing

    def encrypt(self) -> None:
        """Swap in the encrypting codec (a pass-through for jobs without ``encrypt=True``)."""
        if self._encrypting is None:
            from soniq.features.signing import EncryptingCodec

            self._encrypting = EncryptingCodec(self._registry, self.signing, self.codec)
            self.codec = self._encrypting

    def result(self, record: JobRecord | None) -> Any:
        """What the job of ``record`` returned: None unless it is ``done`` (decrypted if needed)."""
        if record is None or record["status"] != JobStatus.DONE:
            return None
        if self._encrypting is not None:
            name = record["job_name"]
            stored = self.definitions.cached(name, stale=True)[1]
            return self._encrypting.decode_result(
                name, record["result"], encrypted=stored is not None and stored.encrypt)
        return record["result"]


def split_options(kwargs: dict[str, Any]) -> tuple[EnqueueOptions | None, dict[str, Any]]:
    """An ``enqueue`` call's :class:`EnqueueOptions` (an ``options=`` keyword of that type; any
    other ``options=`` is a job argument) and the job's own keywords."""
    options = kwargs.get("options")
    if isinstance(options, EnqueueOptions):
        return options, {key: value for key, value in kwargs.items() if key != "options"}
    return None, kwargs


def unique_options(options: EnqueueOptions | None) -> dict[str, Any] | None:
    """The uniqueness fields of a call's ``options`` (checked by the job builder)."""
    if not isinstance(options, EnqueueOptions):
        return None  # depending() names a wrong type
    return {"unique_by": options.unique_by, "unique_for": options.unique_for,
            "unique_while": options.unique_while, "on_conflict": options.on_conflict,
            "max_delay": options.max_delay}


def depending(jobs: Sequence[NewJob], options: EnqueueOptions | None) -> Sequence[NewJob]:
    """``jobs`` with the call's dependencies (``options``), checked: ids, the failure policy.

    Raises:
        ValidationError: naming what is wrong (nothing is written).
    """
    if options is None:
        return jobs
    if not isinstance(options, EnqueueOptions):
        raise ValidationError(f"options must be a soniq.EnqueueOptions, not {options!r}")
    if options.on_dependency_failure not in DEPENDENCY_FAILURES:
        raise ValidationError(
            f"on_dependency_failure must be one of {', '.join(DEPENDENCY_FAILURES)}, got "
            f"{options.on_dependency_failure!r}")
    raw = options.depends_on
    if isinstance(raw, str) or not isinstance(raw, Sequence | set | frozenset):
        raise ValidationError(f"depends_on must be a list of job ids, got {raw!r}")
    ids = []
    for job_id in raw:
        canonical = canonical_uuid(job_id) if isinstance(job_id, str) else None
        if canonical is None:
            raise ValidationError(f"depends_on names {job_id!r}, which is not a job id")
        ids.append(canonical)
    if not ids:
        return jobs
    depends_on = tuple(dict.fromkeys(ids))
    return [job._replace(depends_on=depends_on,
                         on_dependency_failure=options.on_dependency_failure) for job in jobs]


class Enqueuing:
    """``enqueue``, ``enqueue_many`` and ``schedule`` of :class:`soniq.Soniq` (which mixes
    this in), over its ``producer``."""

    producer: Producer

    async def enqueue(self, target: Target, *, args: Mapping[str, Any] | None = None,
                      queue: str | None = None, priority: int | None = None,
                      scheduled_at: When | None = None, unique: bool | None = None,
                      dedup_key: str | None = None, connection: Any = None,
                      **kwargs: Any) -> str:
        """Add one job and return its id.

        ``target``: a function registered with ``@app.job()``, a registered job name, or a
        :class:`TaskRef` (a name not registered here takes queue, priority and attempts from the
        definition its workers stored). Job arguments are keywords or ``args={...}``;
        ``options=EnqueueOptions(...)`` (``depends_on``, ...) is the call's options. ``scheduled_at``:
        an aware datetime, a timedelta or seconds from now. ``unique=True``, a ``dedup_key`` or
        ``EnqueueOptions(unique_by=..., unique_for=..., ...)`` returns the id of the job that
        stands on the key instead of adding one (docs/tutorial/uniqueness.md). ``connection=``
        (PostgreSQL) inserts inside that connection's transaction."""
        producer = self.producer
        options, kwargs = split_options(kwargs)
        job = await producer.build(target, job_kwargs(args, kwargs), queue=queue,
                                   priority=priority, scheduled_at=scheduled_at, unique=unique,
                                   dedup_key=dedup_key, options=options)
        return (await producer.insert(depending([job], options), connection))[0]

    async def enqueue_many(self, target: Target, args_list: Sequence[Mapping[str, Any]], *,
                           queue: str | None = None, priority: int | None = None,
                           scheduled_at: When | None = None, connection: Any = None,
                           options: EnqueueOptions | None = None) -> list[str]:
        """Add one job per element of ``args_list`` and return their ids in order.

        Nothing is written unless every element is valid. On PostgreSQL the rows go in with one
        COPY statement, sent while later elements are still being validated and encoded (an
        invalid one aborts it); joining ``connection``'s transaction, or on the other backends,
        every element is validated first. Unique jobs go in with a statement per chunk (not
        COPY): each element's id is the one that stands on its key, duplicates within the call
        resolved in order. ``options`` apply to every job of the call."""
        jobs = await self.producer.build_many(target, args_list, queue=queue, priority=priority,
                                              scheduled_at=scheduled_at, options=options)
        return await self.producer.insert(depending(jobs, options), connection) if jobs else []

    def workflow(self, name: str) -> Workflow:
        """A new workflow named ``name`` (for humans): ``step = wf.add(target, args={...},
        after=[...])`` for each step, then ``workflow_id = await wf.enqueue()`` writes them all
        in one transaction. See :mod:`soniq.features.workflows` and docs/tutorial/workflows.md."""
        return Workflow(name, self.producer.job_name, self._submit_workflow)

    async def _submit_workflow(self, wf: Workflow, connection: Any) -> str:
        steps = wf.plan()
        jobs = await self.producer.build_steps(steps)
        workflow_id = new_id()
        await self.producer.insert_workflow(workflow_id, wf.name, "workflow",
                                            workflow_jobs(workflow_id, steps, jobs), connection)
        return workflow_id

    async def enqueue_batch(self, target: Target, args_list: Sequence[Mapping[str, Any]], *,
                            on_complete: Target, on_complete_args: Mapping[str, Any] | None = None,
                            name: str | None = None, queue: str | None = None,
                            priority: int | None = None, scheduled_at: When | None = None,
                            connection: Any = None) -> str:
        """One job per element of ``args_list`` (as ``enqueue_many``) and the registered job
        ``on_complete``, which runs once after every one of them finished (done, dead-lettered
        or cancelled) with ``ctx.dependency_results == {"done": n, "dead_letter": n,
        "cancelled": n, "failed": [ids of the jobs not done]}``; all written in one
        transaction. Returns the batch's id (``app.workflows.get(batch_id)``)."""
        producer = self.producer
        producer.callback(on_complete)
        jobs = await producer.build_many(target, args_list, queue=queue, priority=priority,
                                         scheduled_at=scheduled_at)
        items = list(jobs)  # built before the callback: ids in enqueue order
        callback = await producer.build(on_complete, on_complete_args or {}, unique=False)
        workflow_id = new_id()
        rows = batch_jobs(workflow_id, items, callback)
        await producer.insert_workflow(workflow_id, workflow_name(name or jobs.job_name),
                                       "batch", rows, connection)
        return workflow_id

    async def schedule(self, target: Target, run_at: When, *, args: Mapping[str, Any] | None = None,
                       **kwargs: Any) -> str:
        """``enqueue`` to run at ``run_at`` (an aware datetime, a timedelta or seconds from now)."""
        if run_at is None:
            raise ValidationError("schedule() needs run_at; use enqueue() to run as soon as possible")
        return await self.enqueue(target, args=args, scheduled_at=run_at, **kwargs)

