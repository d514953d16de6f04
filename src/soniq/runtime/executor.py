"""Runs one claimed job and decides its outcome.

For each attempt: decode the arguments, inject :class:`~soniq.types.JobContext` if asked, run
hooks and middleware around the function under a per-job cancel scope, and turn what happened
into a :class:`~soniq.types.JobOutcome` for the finisher:

- returned a value → ``done`` (result stored as JSON, kept ``result_ttl`` seconds); a result
  over ``max_result_bytes``, or one the database refuses (:meth:`Executor.unstorable`), fails
  the attempt instead;
- returned :class:`~soniq.types.Snooze` → ``queued`` later, attempt given back;
- raised anything (``SystemExit`` and ``KeyboardInterrupt`` too), or ran past its timeout (even if
  it caught the cancellation and returned) → ``queued`` after the retry delay, or ``dead_letter``
  on the last attempt (error type, message and traceback, each cut to ``max_error_bytes``,
  appended to ``errors``);
- cancelled through ``cancel_job`` → ``cancelled`` (also if it caught the cancellation);
- interrupted by shutdown (outer cancellation) → ``queued`` at once, attempt given back; the
  cancellation is re-raised, never swallowed;
- the outcome itself could not be built (a bug, a date out of range) → ``dead_letter`` with that
  error, never left ``processing``;
- a job name this worker did not register → ``queued`` at once, attempt given back, never run
  nor dead-lettered here (the fetcher leaves such jobs before they get here: :meth:`Executor.leave`;
  the cleanup dead-letters them after ``unknown_job_grace`` if no live worker knows them).

Timeout: the job's ``timeout``, else the ``job_timeout`` setting; 0 disables. A sync function runs
in a worker thread; a thread cannot be killed, so on timeout the attempt is failed at once but the
slot stays busy (``stuck``) until the thread returns, and its late result is discarded.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from soniq.errors import (
    DatabaseError,
    JobArgumentsError,
    NonDeterminismError,
    SerializationError,
)
from soniq.runtime.retry import retry_delay
from soniq.runtime.seams import JobEvent, call_hook
from soniq.serialization import ascii_text, capped_text, dumps, loads, longer_than, storable_text
from soniq.settings import LONGEST_DELAY
from soniq.types import BATCH_ITEM, JobContext, JobOutcome, JobStatus, RateLimited, Snooze

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from soniq.registry import JobRegistry, JobSpec
    from soniq.runtime.progress import JobStateWriter
    from soniq.runtime.seams import EventDispatcher, EventKind, Hooks, PayloadCodec
    from soniq.settings import SoniqSettings
    from soniq.types import ClaimedJob, DependencyResult

__all__ = ["Executor", "current_job"]

#: The outcomes after which a job never runs again (unless replayed).
_FINAL = frozenset({JobStatus.DONE, JobStatus.DEAD_LETTER, JobStatus.CANCELLED})

logger = logging.getLogger("soniq.worker")

#: The job running in the current task (None outside jobs): logs and events find their job here.
current_job: ContextVar[JobContext | None] = ContextVar("soniq_current_job", default=None)


@dataclass(slots=True)
class _Running:
    job: ClaimedJob
    scope: anyio.CancelScope
    cancel_requested: bool = False


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is (or a group holding) the event loop's cancellation exception."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(cancelled) is not None
    return isinstance(exc, cancelled)


def _text_of(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` itself raises."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


class Executor:
    """Runs claimed jobs for one worker; ``running`` and ``stuck`` tell the fetcher how many
    slots are busy."""

    def __init__(self, *, registry: JobRegistry, settings: SoniqSettings, hooks: Hooks,
                 events: EventDispatcher, codec: PayloadCodec, worker_id: str,
                 put_outcome: Callable[[JobOutcome], None], clock: Callable[[], datetime],
                 thread_limiter: anyio.CapacityLimiter,
                 park: Callable[[ClaimedJob, str, int], Awaitable[bool]] | None = None,
                 dependencies: Callable[[str], Awaitable[list[DependencyResult]]] | None = None,
                 states: JobStateWriter | None = None) -> None:
        self._registry = registry
        self._settings = settings
        self._hooks = hooks
        self._events = events
        self._codec = codec
        self._worker_id = worker_id
        self._put = put_outcome
        self._now = clock
        self._limiter = thread_limiter
        self._park = park
        self._dependencies = dependencies
        self._states = states  # ctx.progress / ctx.checkpoint
        self.running: dict[str, _Running] = {}
        self._loggers: dict[str, logging.Logger] = {}
        self.stuck = 0
        self.completed = 0
        #: Called when a stuck thread finally returns (the fetcher sets it to wake itself).
        self.on_slot_freed: Callable[[], None] = lambda: None

    def request_cancel(self, job_id: str) -> None:
        """Cancel a running job's scope; it ends ``cancelled``. Unknown ids are ignored."""
        entry = self.running.get(job_id)
        if entry is not None and not entry.cancel_requested:
            entry.cancel_requested = True
            entry.scope.cancel()

    def admit(self, job: ClaimedJob) -> None:
        """Count a claimed job as running from the moment it is claimed, before its task starts,
        so the fetcher never claims more than its free slots."""
        self.running[job.id] = _Running(job, anyio.CancelScope())

    def knows(self, job_name: str) -> bool:
        """Whether this worker registered ``job_name`` (it runs no other job)."""
        return self._registry.get(job_name) is not None

    def leave(self, job: ClaimedJob) -> None:
        """Give back a claimed job (not admitted) of a name this worker did not register:
        queued again at once for a worker that knows it, attempt refunded, its place in the
        queue (``scheduled_at``) kept."""
        self._put(JobOutcome(job.id, job.lease_id, JobStatus.QUEUED, run_at=job.scheduled_at,
                             refund_attempt=True))

    def give_back(self, job: ClaimedJob) -> None:
        """Return an admitted job that never started: queued again at once, attempt refunded
        (cancelled instead, if a cancel was requested)."""
        del self.running[job.id]
        self._put(JobOutcome(job.id, job.lease_id, JobStatus.QUEUED, refund_attempt=True))

    async def run(self, job: ClaimedJob) -> None:
        """Run one admitted attempt and hand its outcome to the finisher."""
        entry = self.running[job.id]
        if entry.cancel_requested:  # cancelled while it waited for a slot
            del self.running[job.id]
            self._emit("cancelled", job)
            self._put(JobOutcome(job.id, job.lease_id, JobStatus.CANCELLED,
                                 expires_at=self._expiry(), workflow_id=job.workflow_id))
            return
        try:
            outcome = await self._attempt(job, entry)
            if outcome is None:  # given back parked (a limited job enqueued without its key)
                return
        except Exception as exc:  # a bug, or a value out of range: the job must still end
            logger.exception("job %s (%s): the worker could not build the outcome of its attempt",
                             job.id, job.job_name)
            outcome = self._failed(job, None, type(exc).__name__,
                                   f"the worker could not record this attempt: {_text_of(exc)}",
                                   "".join(traceback.format_exception(exc)), final=True)
        except BaseException:
            # The runtime's cancellation (shutdown), perhaps in a group; _attempt lets nothing
            # else out. Not a failure: the job goes back without using an attempt.
            if self._states is not None:
                self._states.forget(job.lease_id)
            self._put(JobOutcome(job.id, job.lease_id, JobStatus.QUEUED, refund_attempt=True))
            raise
        finally:
            # A job given back parked may be claimed (and admitted) again before this ends.
            if self.running.get(job.id) is entry:
                del self.running[job.id]
        if self._states is not None and self._states.reported(job.lease_id):
            with anyio.CancelScope(shield=True):  # its last progress, before its outcome
                await self._states.settle(job.lease_id)
        self.completed += 1
        if job.workflow_id is not None and outcome.status in _FINAL:
            outcome = outcome._replace(workflow_id=job.workflow_id)
        self._put(outcome)

    def _emit(self, kind: EventKind, job: ClaimedJob, *, duration: float | None = None,
              error: str | None = None, scheduled_at: datetime | None = None) -> None:
        if self._events.wants(kind):
            self._events.emit(JobEvent(kind, job.id, job.job_name, job.queue, job.attempts,
                                       self._now(), duration, error, scheduled_at))

    async def _attempt(self, job: ClaimedJob, entry: _Running) -> JobOutcome | None:
        spec = self._registry.get(job.job_name)
        if spec is None:  # never dead-lettered here: left for a worker that knows it
            return JobOutcome(job.id, job.lease_id, JobStatus.QUEUED, run_at=job.scheduled_at,
                              refund_attempt=True)
        try:
            kwargs = self._codec.decode_args(job.job_name, job.args)
        except Exception as exc:
            return self._failed(job, spec, "CorruptArguments",
                                f"stored arguments cannot be decoded: {exc}", None, final=True)
        if spec.parameters is not None:
            try:  # arguments written past enqueue's check (raw SQL, an old signature) never bind
                spec.parameters.check(job.job_name, kwargs)
            except JobArgumentsError as exc:
                return self._failed(job, spec, "CorruptArguments",
                                    f"stored arguments do not fit: {exc.message}", None, final=True)
        if (spec.concurrency_limit is not None and job.concurrency_key is None
                and self._park is not None):
            return await self._unkeyed(job, spec, kwargs)
        results: dict[str, Any] = {}
        if job.has_dependencies and self._dependencies is not None:
            try:
                results = self._dependency_results(await self._dependencies(job.id))
            except DatabaseError as exc:  # back unchanged; the next claim tries again
                logger.warning("job %s (%s): could not read its dependencies' results: %s",
                               job.id, job.job_name, exc)
                return JobOutcome(job.id, job.lease_id, JobStatus.QUEUED, refund_attempt=True)
        job_logger = self._loggers.get(job.job_name)
        if job_logger is None:  # logging.getLogger takes a global lock: once per job name
            job_logger = self._loggers[job.job_name] = logging.getLogger(f"soniq.jobs.{job.job_name}")
        try:
            saved = (None if job.checkpoint is None
                     else self._codec.decode_result(job.job_name, loads(job.checkpoint)))
        except Exception as exc:
            return self._failed(job, spec, "CorruptCheckpoint",
                                f"stored checkpoint cannot be decoded: {exc}", None, final=True)
        ctx = JobContext(job_id=job.id, job_name=job.job_name, attempt=job.attempts,
                         max_attempts=job.max_attempts, queue=job.queue,
                         worker_id=self._worker_id, scheduled_at=job.scheduled_at,
                         created_at=job.created_at, lease_id=job.lease_id,
                         logger=job_logger, dependency_results=results,
                         checkpoint_state=saved, reporter=self._states)
        if spec.context_param is not None:
            kwargs[spec.context_param] = ctx
        timeout = spec.timeout if spec.timeout is not None else self._settings.job_timeout
        started = anyio.current_time()
        if timeout:
            entry.scope.deadline = started + timeout
        self._emit("started", job, scheduled_at=job.scheduled_at)
        token = current_job.set(ctx)
        try:
            with entry.scope:
                result = await self._invoke(spec, kwargs, ctx)
            # cancel_called, not cancelled_caught: a job that caught the cancellation and
            # returned anyway still timed out (or was cancelled), whatever it returned.
            if entry.scope.cancel_called:
                if not entry.scope.cancelled_caught:
                    logger.warning("job %s (%s) ignores cancellation: it went on after being "
                                   "cancelled (it must let CancelledError propagate); its return "
                                   "value is discarded", job.id, job.job_name)
                if entry.cancel_requested:
                    self._emit("cancelled", job)
                    return JobOutcome(job.id, job.lease_id, JobStatus.CANCELLED,
                                      expires_at=self._expiry())
                raise TimeoutError(f"job exceeded its timeout of {timeout:g}s")
            if isinstance(result, Snooze):
                return self._later(job, result.seconds)
            encoded = self._codec.encode_result(job.job_name, result)
            if longer_than(encoded, self._settings.max_result_bytes):  # O(1) for most results
                raise SerializationError(
                    f"result could not be stored: its JSON takes more than max_result_bytes "
                    f"({self._settings.max_result_bytes:,} bytes); return less (keep large data "
                    "elsewhere and return a reference to it), or raise max_result_bytes")
        except RateLimited as exc:  # not a failure: no on_error hooks
            logger.info("job %s (%s) is rate limited: its bucket is held for %gs", job.id,
                        job.job_name, exc.retry_after)
            return self._later(job, exc.retry_after, hold=True)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt...: the job failed too
            if _is_cancellation(exc):  # the runtime's own: never swallowed
                raise
            await self._on_error(ctx, exc)
            return self._failed(job, spec, type(exc).__name__, _text_of(exc),
                                "".join(traceback.format_exception(exc)),
                                final=isinstance(exc, NonDeterminismError))  # never a retry loop
        finally:
            current_job.reset(token)
        if self._events.wants("done"):
            self._emit("done", job, duration=anyio.current_time() - started)
        return JobOutcome(job.id, job.lease_id, JobStatus.DONE, result=encoded,
                          expires_at=self._expiry(), job=job)

    async def _unkeyed(self, job: ClaimedJob, spec: JobSpec,
                       kwargs: dict[str, Any]) -> JobOutcome | None:
        """A limited job enqueued without its concurrency key (by a producer that did not know
        the limit): dead-lettered when its arguments lack the key, else given back parked with
        its key (its attempt refunded), so it runs within the limit. None: given back."""
        try:
            key = spec.limit_key(kwargs) or ""  # a str: the job is limited
        except JobArgumentsError as exc:
            return self._failed(job, spec, "MissingConcurrencyKey", str(exc), None, final=True)
        assert self._park is not None and spec.concurrency_limit is not None
        try:
            parked = await self._park(job, key, spec.concurrency_limit)
        except DatabaseError as exc:  # back unchanged; the next claim tries again
            logger.warning("job %s (%s): could not give it back with its concurrency key: %s",
                           job.id, job.job_name, exc)
            return JobOutcome(job.id, job.lease_id, JobStatus.QUEUED, refund_attempt=True)
        if parked:
            logger.info("job %s (%s) was enqueued without its concurrency key; given back "
                        "with key %s", job.id, job.job_name, key)
        return None

    def _later(self, job: ClaimedJob, seconds: float, *, hold: bool = False) -> JobOutcome:
        """Back in the queue after ``seconds`` with the attempt given back (``Snooze``); with
        ``hold`` its rate bucket is held as long (``RateLimited``)."""
        try:
            seconds = min(max(0.0, float(seconds)), LONGEST_DELAY)  # NaN -> 0
        except (TypeError, ValueError):
            seconds = 0.0
        at = self._now() + timedelta(seconds=seconds)
        return JobOutcome(job.id, job.lease_id, JobStatus.QUEUED, refund_attempt=True,
                          run_at=at, rate_hold=at if hold else None)

    def _dependency_results(self, found: list[DependencyResult]) -> dict[str, Any]:
        """``ctx.dependency_results``: by step name (or id), decoded like ``get_result``; a
        batch's callback (every dependency a step ``#n``: ``BATCH_ITEM``) gets the counts."""
        if found and all((dep.step_name or "").startswith(BATCH_ITEM) for dep in found):
            counts = Counter(dep.status.value for dep in found)
            return {"done": counts["done"], "dead_letter": counts["dead_letter"],
                    "cancelled": counts["cancelled"],
                    "failed": [dep.id for dep in found if dep.status != JobStatus.DONE]}
        return {dep.step_name or dep.id: self._codec.decode_result(dep.job_name, dep.result)
                if dep.status == JobStatus.DONE else None for dep in found}

    def _expiry(self) -> datetime:
        return self._now() + timedelta(seconds=self._settings.result_ttl)

    async def _on_error(self, ctx: JobContext, exc: BaseException) -> None:
        for hook in self._hooks.on_error:
            try:
                await call_hook(hook, ctx, exc)
            except Exception:
                logger.exception("on_error hook %r failed", hook)

    async def _invoke(self, spec: JobSpec, kwargs: dict[str, Any], ctx: JobContext) -> Any:
        if self._hooks.empty:
            return await self._call(spec, kwargs, ctx)
        for hook in self._hooks.before_job:
            await call_hook(hook, ctx)
        call: Callable[[], Awaitable[Any]] = partial(self._call, spec, kwargs, ctx)
        for middleware in reversed(self._hooks.middleware):
            call = partial(middleware, ctx, call)
        result = await call()
        for hook in self._hooks.after_job:
            await call_hook(hook, ctx, result)
        return result

    async def _call(self, spec: JobSpec, kwargs: dict[str, Any], ctx: JobContext) -> Any:
        if spec.is_async:
            return await spec.func(**kwargs)
        return await self._call_in_thread(spec, kwargs, ctx)

    async def _call_in_thread(self, spec: JobSpec, kwargs: dict[str, Any], ctx: JobContext) -> Any:
        lock = threading.Lock()
        state = {"finished": False, "abandoned": False}

        def run() -> Any:
            try:
                return spec.func(**kwargs)
            finally:
                with lock:
                    state["finished"] = True
                    abandoned = state["abandoned"]
                if abandoned:
                    with contextlib.suppress(Exception):  # the loop may be gone by now
                        anyio.from_thread.run_sync(self._thread_returned, ctx)

        try:
            return await anyio.to_thread.run_sync(run, limiter=self._limiter,
                                                  abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            with lock:
                if not state["finished"]:
                    state["abandoned"] = True
                    self.stuck += 1
                    logger.warning(
                        "job %s (%s) is stuck: its thread cannot be stopped and keeps running; "
                        "its slot stays busy until the thread returns", ctx.job_id, spec.name)
            raise

    def _thread_returned(self, ctx: JobContext) -> None:
        self.stuck -= 1
        logger.warning("the stuck thread of job %s (%s) returned; its late result is discarded",
                       ctx.job_id, ctx.job_name)
        self.on_slot_freed()

    def unstorable(self, outcome: JobOutcome, reason: str) -> JobOutcome | None:
        """What to write instead of ``outcome`` once the database refused it alone for its data
        (:class:`~soniq.errors.DataRejectedError`, message ``reason``): for a finished job, a
        failed attempt ("result could not be stored: ..."), retried or dead-lettered like any
        failure; for a failure, the same outcome with its error text escaped to ASCII (for a
        database whose encoding cannot hold it) and capped. None: nothing can be made of it."""
        job = outcome.job
        if outcome.status is JobStatus.DONE and job is not None:
            return self._failed(job, self._registry.get(job.job_name), "ResultNotStored",
                                f"result could not be stored: {ascii_text(reason)}", None,
                                final=False)
        if outcome.error is None:
            return None
        entry = loads(outcome.error)
        for key in ("type", "message", "traceback"):
            if isinstance(entry.get(key), str):
                entry[key] = capped_text(ascii_text(entry[key]), self._settings.max_error_bytes)
        return outcome._replace(error=dumps(entry))

    def _failed(self, job: ClaimedJob, spec: JobSpec | None, error_type: str, message: str,
                tb: str | None, *, final: bool) -> JobOutcome:
        now = self._now()
        # Exception text may hold anything; a NUL or lone surrogate must not make it unstorable,
        # nor may its size.
        limit = self._settings.max_error_bytes
        error_type = capped_text(storable_text(error_type), limit)
        message = capped_text(storable_text(message), limit)
        error = dumps({"attempt": job.attempts, "type": error_type, "message": message,
                       "traceback": None if tb is None else capped_text(storable_text(tb), limit),
                       "at": now.isoformat()})
        if final or spec is None or job.attempts >= job.max_attempts:
            logger.error("job %s (%s) dead-lettered after attempt %d/%d: %s: %s", job.id,
                         job.job_name, job.attempts, job.max_attempts, error_type, message)
            self._emit("dead_letter", job, error=f"{error_type}: {message}")
            return JobOutcome(job.id, job.lease_id, JobStatus.DEAD_LETTER, error=error)
        delay = retry_delay(job.attempts, delay=spec.retry_delay, backoff=spec.retry_backoff,
                            max_delay=spec.retry_max_delay)
        logger.warning("job %s (%s) failed attempt %d/%d, retrying in %.3gs: %s: %s", job.id,
                       job.job_name, job.attempts, job.max_attempts, delay, error_type, message)
        self._emit("failed", job, error=f"{error_type}: {message}")
        return JobOutcome(job.id, job.lease_id, JobStatus.QUEUED, error=error,
                          run_at=now + timedelta(seconds=delay))
