"""Job logs: records emitted inside a job, stored with the job and removed with it.

Inside a job, records from ``ctx.logger`` and from any stdlib logger (``logging.getLogger("x")``)
are captured by one ``logging.Handler`` on the root logger (installed once per process, removed
when the last capturing app closes). The handler reads two context variables: the running job
(:data:`soniq.runtime.executor.current_job`) and the owning app's :class:`JobLogs`, which a
middleware sets around each job -- so with several apps in one process each record reaches the
app whose worker runs the job (DESIGN.md §7). Sync jobs run in a worker thread with a copy of the
context, so their records are routed the same way.

Records are never written on the job's path: they go to a bounded in-memory buffer that a
worker ``Service`` flushes every ``job_log_flush_interval`` seconds in one batch, and on worker
shutdown and ``app.close()``. When the database is down the buffer keeps the newest
``job_log_buffer_size`` records, drops the oldest and counts them (``JobLogs.dropped``).

Capture is installed only when the app asks for it -- touching ``app.logs`` or setting
``capture_job_logs=True`` -- and only records at ``job_log_level`` or above are kept. If the
root logger's level is above ``job_log_level``, it is lowered to it while capture is installed
(handlers already on the root logger keep the previous threshold), otherwise stdlib loggers
would drop the records before any handler sees them.

Use it as ``app.logs``::

    for record in await app.logs.for_job(job_id):
        print(record.created_at, record.level, record.logger, record.message)
    await app.logs.search_logs("timeout", level="WARNING", limit=20)
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from soniq.backends.stores import JobLogRecord, LogStore
from soniq.errors import UnsupportedOperationError, ValidationError
from soniq.ids import is_uuid
from soniq.runtime.executor import current_job
from soniq.serialization import to_utc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.types import JobContext

__all__ = ["JobLogRecord", "JobLogs", "LogFlushService"]

logger = logging.getLogger("soniq.logs")

#: The app's log buffer for the job running in this context (set by :meth:`JobLogs.capture`).
_sink: ContextVar[JobLogs | None] = ContextVar("soniq_job_log_sink", default=None)

#: Records written per store call.
FLUSH_BATCH = 1_000
#: Seconds the final flush (worker shutdown, close) may take.
FINAL_FLUSH_TIMEOUT = 5.0


async def _nothing() -> None:
    """The default ``ready``: a backend used directly is already initialised by its owner."""


def level_number(level: str | int) -> int:
    """``"warning"`` / ``30`` -> 30; an unknown name is a :class:`ValidationError`."""
    if isinstance(level, bool):
        raise ValidationError(f"unknown log level {level!r}")
    if isinstance(level, int):
        return level
    number = logging.getLevelName(str(level).strip().upper())
    if not isinstance(number, int):
        raise ValidationError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR "
                              "or CRITICAL")
    return number


class _CaptureHandler(logging.Handler):
    """The one root handler: hands records emitted inside a capturing job to its app's buffer."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _sink.get()
        if sink is None:
            return
        ctx = current_job.get()
        if ctx is not None:
            sink._capture(record, ctx)


class _Installation:
    """Process-wide: the root handler, installed while at least one app captures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handler: _CaptureHandler | None = None
        self.owners: set[int] = set()
        self.levels: dict[int, int] = {}
        self.saved_root_level: int | None = None
        self.set_root_level: int | None = None
        self.adjusted: dict[logging.Handler, int] = {}

    def add(self, owner: JobLogs) -> None:
        with self.lock:
            self.owners.add(id(owner))
            self.levels[id(owner)] = owner.levelno
            root = logging.getLogger()
            if self.handler is None:
                self.handler = _CaptureHandler()
                root.addHandler(self.handler)
            wanted = min(self.levels.values())
            if root.getEffectiveLevel() > wanted:
                if self.saved_root_level is None:
                    self.saved_root_level = root.level
                    for handler in root.handlers:
                        if handler is not self.handler and handler.level == logging.NOTSET:
                            handler.setLevel(root.level)
                            self.adjusted[handler] = root.level
                root.setLevel(wanted)
                self.set_root_level = wanted

    def remove(self, owner: JobLogs) -> None:
        with self.lock:
            self.owners.discard(id(owner))
            self.levels.pop(id(owner), None)
            if self.owners or self.handler is None:
                return
            root = logging.getLogger()
            root.removeHandler(self.handler)
            self.handler = None
            if self.saved_root_level is not None and root.level == self.set_root_level:
                root.setLevel(self.saved_root_level)
            for handler, level in self.adjusted.items():
                if handler.level == level:
                    handler.setLevel(logging.NOTSET)
            self.saved_root_level = self.set_root_level = None
            self.adjusted.clear()


_installation = _Installation()


def capture_installed() -> bool:
    """True while some app in this process captures job logs (a handler is on the root logger)."""
    return _installation.handler is not None


class JobLogs:
    """Capture, store and search the logs of jobs.

    Args:
        backend: the storage backend; it must offer ``logs`` (a
            :class:`~soniq.backends.stores.LogStore`) for anything to be stored.
        ready: awaited before every storage call (the app passes ``ensure_initialized``).
        level: records below this level are not kept (the ``job_log_level`` setting).
        flush_interval: seconds between the flusher's writes.
        buffer_size: records kept in memory while they cannot be written; the oldest go first.

    Construction installs nothing; :meth:`install` (the app calls it) adds the root handler.
    """

    def __init__(self, backend: StorageBackend, *, ready: Callable[[], Awaitable[None]] = _nothing,
                 level: str | int = "INFO", flush_interval: float = 0.5,
                 buffer_size: int = 10_000, error_retry_delay: float = 5.0) -> None:
        self._backend = backend
        self._ready = ready
        self.levelno = level_number(level)
        self.flush_interval = flush_interval
        self.error_retry_delay = error_retry_delay
        self._buffer: deque[JobLogRecord] = deque()
        self._buffer_size = buffer_size
        self._lock = threading.Lock()
        self._flush_lock = anyio.Lock()
        self._formatter = logging.Formatter()
        self._installed = False
        #: Records dropped because the buffer was full (the database was unreachable).
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<JobLogs level={logging.getLevelName(self.levelno)} pending={len(self._buffer)}>"

    # -- capture ------------------------------------------------------------------------------
    @property
    def installed(self) -> bool:
        return self._installed

    def install(self) -> None:
        """Start capturing (idempotent)."""
        if not self._installed:
            _installation.add(self)
            self._installed = True

    def uninstall(self) -> None:
        """Stop capturing (idempotent); the root handler goes when no app captures."""
        if self._installed:
            _installation.remove(self)
            self._installed = False

    async def capture(self, ctx: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        """The middleware that routes the job's records to this app (registered outermost)."""
        token = _sink.set(self)
        try:
            return await call_next()
        finally:
            _sink.reset(token)

    def _capture(self, record: logging.LogRecord, ctx: JobContext) -> None:
        if record.levelno < self.levelno:
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not fail the job
            message = f"{record.msg!r} % {record.args!r}"
        exception = None
        if record.exc_info:
            exception = self._formatter.formatException(record.exc_info)
        elif record.exc_text:
            exception = record.exc_text
        if record.stack_info:
            exception = f"{exception}\n{record.stack_info}" if exception else record.stack_info
        entry = JobLogRecord(
            job_id=ctx.job_id, job_name=ctx.job_name, queue=ctx.queue, attempt=ctx.attempt,
            level=record.levelname, levelno=record.levelno, logger=record.name, message=message,
            exception=exception, created_at=datetime.fromtimestamp(record.created, UTC))
        self._append([entry])

    def _append(self, entries: list[JobLogRecord], *, front: bool = False) -> None:
        with self._lock:
            if front:
                self._buffer.extendleft(reversed(entries))
            else:
                self._buffer.extend(entries)
            over = len(self._buffer) - self._buffer_size
            if over > 0:
                for _ in range(over):
                    self._buffer.popleft()
                first = self.dropped == 0
                self.dropped += over
        if over > 0 and first:
            logger.warning("the job log buffer is full (%d records; is the database down?); "
                           "dropping the oldest records (counted in app.logs.dropped)",
                           self._buffer_size)

    @property
    def pending(self) -> int:
        """Records captured but not yet written."""
        return len(self._buffer)

    # -- writing ------------------------------------------------------------------------------
    @property
    def store(self) -> LogStore:
        store = self._backend.logs
        if store is None:
            raise UnsupportedOperationError(
                f"the {self._backend.name} backend does not store job logs; use the memory, "
                "SQLite or PostgreSQL backend")
        return store

    async def flush(self) -> int:
        """Write every buffered record now; how many were written. On a storage error the
        records go back to the buffer (bounded) and the error propagates."""
        if not self._buffer:
            return 0
        async with self._flush_lock:
            written = 0
            while self._buffer:
                with self._lock:
                    batch = [self._buffer.popleft()
                             for _ in range(min(FLUSH_BATCH, len(self._buffer)))]
                try:
                    await self._ready()
                    # Shielded: a write interrupted by shutdown could commit and then be
                    # written again from the buffer by the final flush.
                    with anyio.CancelScope(shield=True), anyio.fail_after(FINAL_FLUSH_TIMEOUT):
                        written += await self.store.insert_logs(batch)
                except BaseException:
                    self._append(batch, front=True)
                    raise
            return written

    async def close(self) -> None:
        """Uninstall, then write what is buffered (bounded, shielded; errors are logged)."""
        self.uninstall()
        await self._final_flush()

    async def _final_flush(self) -> None:
        if not self._buffer:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_FLUSH_TIMEOUT):
            try:
                await self.flush()
            except Exception as exc:
                logger.warning("could not write %d job log records: %s", len(self._buffer), exc)

    def service(self) -> LogFlushService:
        """The flusher every worker runs (a runtime ``Service``)."""
        return LogFlushService(self)

    # -- reading ------------------------------------------------------------------------------
    async def for_job(self, job_id: str) -> list[JobLogRecord]:
        """The job's records, oldest first (``[]`` for an unknown or malformed id). Buffered
        records of this process are written first."""
        if not is_uuid(job_id):
            return []
        await self._flush_quietly()
        await self._ready()
        return await self.store.for_job(job_id)

    async def search_logs(self, query: str | None = None, *, job_id: str | None = None,
                          level: str | int | None = None, since: datetime | timedelta | None = None,
                          limit: int = 100) -> list[JobLogRecord]:
        """Records whose message contains ``query`` (case-insensitive; None/"" matches all),
        newest first. ``level`` is a minimum (``"WARNING"`` also returns errors); ``since`` an
        aware datetime or a timedelta back from now."""
        if query is not None and not isinstance(query, str):
            raise ValidationError(f"query must be a string, got {type(query).__name__}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValidationError(f"limit must be an integer >= 1, got {limit!r}")
        min_levelno = None if level is None else level_number(level)
        cutoff = None
        if isinstance(since, timedelta):
            try:
                cutoff = datetime.now(UTC) - since
            except OverflowError:  # further back than datetime reaches: everything, or nothing
                if since < timedelta(0):
                    return []
        elif since is not None:
            if not isinstance(since, datetime):
                raise ValidationError("since must be an aware datetime or a timedelta")
            cutoff = to_utc(since, what="since")
        if job_id is not None and not is_uuid(job_id):
            return []
        await self._flush_quietly()
        await self._ready()
        return await self.store.search(query, job_id=job_id, min_levelno=min_levelno,
                                       since=cutoff, limit=limit)

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except Exception as exc:
            logger.warning("could not write buffered job log records: %s", exc)


class LogFlushService:
    """Writes an app's buffered job logs every ``flush_interval`` seconds, and once more when
    the worker stops. Storage errors are logged and retried after ``error_retry_delay``."""

    name = "job-logs"

    def __init__(self, logs: JobLogs) -> None:
        self._logs = logs

    def __repr__(self) -> str:
        return f"<LogFlushService interval={self._logs.flush_interval:g}s>"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await anyio.sleep(self._logs.flush_interval)
                if not self._logs.pending:
                    continue
                try:
                    await self._logs.flush()
                except Exception as exc:
                    logger.warning("writing job logs failed (%s); retrying in %gs", exc,
                                   self._logs.error_retry_delay)
                    await anyio.sleep(self._logs.error_retry_delay)
        finally:
            await self._logs._final_flush()
