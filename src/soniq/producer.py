"""The producer path: every job that ``app.enqueue``/``enqueue_many``, ``app.sync`` and the
framework integrations write goes through one :class:`Producer`, owned by the app
(``app.producer``).

It builds rows with :class:`~soniq.registry.JobBuilder` (validation, job options, the payload
codec, which encrypts ``encrypt=True`` jobs), writes them inside the producer tracing span, then
wakes this process's workers and emits the ``enqueued`` events; it also decodes results on the way
back. Callers on another event loop (``app.sync``) build rows here too and hand their own write to
:meth:`Producer.insert_blocking`, so both paths share every step but the storage round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from soniq.errors import JobArgumentsError, UnsupportedOperationError
from soniq.features.definitions import StoredLimits
from soniq.lifecycle import State
from soniq.limits import limit_key
from soniq.registry import JobBuilder, TaskRef
from soniq.runtime import JobEvent, JsonCodec
from soniq.serialization import loads, utc_now
from soniq.types import JobStatus, JobStream

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from soniq.backends import StorageBackend
    from soniq.features.signing import EncryptingCodec, Signing
    from soniq.features.tracing import Tracing
    from soniq.lifecycle import Lifecycle
    from soniq.registry import JobRegistry
    from soniq.runtime import EventDispatcher, PayloadCodec, Worker
    from soniq.settings import SoniqSettings
    from soniq.types import JobRecord, NewJob

__all__ = ["Producer", "Target", "When"]

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
        #: The limits of job names this app does not register, from their stored definitions.
        self._limits = StoredLimits(backend)
        self._signing: Signing | None = None

    # -- rows -----------------------------------------------------------------------------------
    def job(self, target: Target, args: Mapping[str, Any], *, queue: str | None = None,
            priority: int | None = None, scheduled_at: When | None = None,
            unique: bool | None = None, dedup_key: str | None = None) -> NewJob:
        """One validated row, as ``enqueue`` writes it (nothing is written here)."""
        return self._builder(target, queue, priority, scheduled_at, unique, dedup_key,
                             many=False).one(args)

    def jobs(self, target: Target, args_list: Sequence[Mapping[str, Any]], *,
             queue: str | None = None, priority: int | None = None,
             scheduled_at: When | None = None) -> JobStream:
        """The rows of ``enqueue_many``, each element validated as its row is read (``list()``
        the stream to check them all)."""
        if isinstance(args_list, str | bytes | Mapping) or not isinstance(args_list, Sequence):
            raise JobArgumentsError("args_list must be a list of dicts, one per job")
        return self._builder(target, queue, priority, scheduled_at, None, None,
                             many=True).stream(args_list)

    def _builder(self, target: Target, queue: str | None, priority: int | None,
                 scheduled_at: When | None, unique: bool | None, dedup_key: str | None, *,
                 many: bool) -> JobBuilder:
        """Validate what the jobs of one call share."""
        self._lifecycle.check()
        return JobBuilder(self._registry, self._settings, target, queue=queue, priority=priority,
                          scheduled_at=scheduled_at, unique=unique, dedup_key=dedup_key,
                          many=many, encode=self.codec.encode_args,
                          keyed_digest=self._keyed_digest)

    def _keyed_digest(self, key: str) -> str:
        return self.signing().digest(key)

    # -- writes ---------------------------------------------------------------------------------
    async def insert(self, jobs: Sequence[NewJob], connection: Any = None) -> list[str]:
        """Write ``jobs`` with the app's backend (in ``connection``'s transaction if given) and
        return their ids. A :class:`JobStream` is streamed only where a failure cannot hurt:
        never into the caller's transaction."""
        if jobs and (self._registry.get(jobs[0].job_name if type(jobs) is not JobStream
                               else jobs.job_name) is None):
            jobs = await self._limited_by_definition(jobs)
        if type(jobs) is JobStream and (connection is not None  # not isinstance: an ABC check
                                        or not self._backend.streams_inserts):
            jobs = list(jobs)  # every element validated before anything is written
        if connection is not None and not self._backend.supports_transactions:
            raise UnsupportedOperationError(
                f"enqueue(connection=...) joins your database transaction, which the "
                f"{self._backend.name} backend cannot do; use PostgreSQL"
            )
        if self._lifecycle.state is not State.OPEN:
            await self._lifecycle.open()
        with self._span(jobs):
            ids = await self._backend.insert_jobs(jobs, connection=connection)
        if self.workers and connection is None:
            self.wake({job.queue for job in jobs})
        self._inserted(jobs)
        return ids

    async def _limited_by_definition(self, jobs: Sequence[NewJob]) -> Sequence[NewJob]:
        """Jobs of a name this app does not register, with their concurrency key filled in
        when the name's stored definition (first-seen rule) has a limit. A job whose arguments
        lack the key goes in without one: the worker that claims it dead-letters it."""
        limit, key = await self._limits.get(
            jobs[0].job_name if type(jobs) is not JobStream else jobs.job_name)
        if limit is None:
            return jobs
        filled = []
        for job in jobs:
            try:
                filled.append(job._replace(
                    concurrency_key=limit_key(job.job_name, key, loads(job.args)),
                    concurrency_limit=limit))
            except JobArgumentsError:
                filled.append(job)
        return filled

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
        return self.tracing.send(jobs[0].queue, jobs[0].job_name, [job.id for job in jobs])

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
            return self._encrypting.decode_result(record["job_name"], record["result"])
        return record["result"]
