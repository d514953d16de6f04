"""Writes job outcomes in batches: a few milliseconds of outcomes go to storage in one fenced
statement (DESIGN.md §4). Outcomes the database refuses because the lease moved on (the job was
rescued and re-run elsewhere) are logged, never retried. On a database error the batch stays
buffered and is written once the database is back; the buffer is flushed on shutdown.

An outcome the database can never store (:class:`~soniq.errors.DataRejectedError`: a result too
large, a character the database's encoding lacks) must not hold up the others: a refused batch is
split in halves until the outcome is alone, and ``on_unstorable`` (the executor's) says what to
write instead -- a failed attempt for a result, an ASCII-escaped error text for a failure. An
outcome nothing can be made of is dropped (logged, counted in ``dropped``); its job stays
``processing`` until this worker stops and it is rescued.

A write in flight is never abandoned half-way by cancellation (shutdown): it finishes (bounded),
so its outcome is known. A write that failed may still have committed (the connection dropped
after the commit); when its retry is refused, that is the reason, not a rescue, and it is logged
as such."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from soniq.errors import DatabaseError, DataRejectedError

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.types import JobOutcome

__all__ = ["Finisher"]

logger = logging.getLogger("soniq.worker")

#: Longest a write of outcomes may hold up cancellation (shutdown) once it is in flight.
WRITE_BOUND = 10.0


class Finisher:
    """Buffers :class:`~soniq.types.JobOutcome` and flushes them with ``complete_jobs``."""

    def __init__(self, backend: StorageBackend, *, interval: float = 0.005, batch_size: int = 1000,
                 error_retry_delay: float = 5.0) -> None:
        self._backend = backend
        self._interval = interval
        self._batch_size = batch_size
        self._error_retry_delay = error_retry_delay
        self._buffer: list[JobOutcome] = []
        self._pending = anyio.Event()
        self._lock = anyio.Lock()
        self._unsure: set[str] = set()  # jobs whose outcome's write failed, perhaps after commit
        self.lease_lost = 0  # outcomes refused by the lease fence
        self.dropped = 0  # outcomes the database refused with nothing to write instead
        #: What to write instead of an outcome the database refused alone for its data (given
        #: the outcome and the reason); None drops it. The worker sets the executor's.
        self.on_unstorable: Callable[[JobOutcome, str], JobOutcome | None] = lambda o, r: None
        #: Told the workflows of the steps whose final outcome a write stored (the worker sets
        #: ``EventDispatcher.steps_ended``); called only for batches with such steps.
        self.on_steps_ended: Callable[[set[str]], None] = lambda workflow_ids: None

    def put(self, outcome: JobOutcome) -> None:
        """Queue an outcome (no I/O; safe to call while being cancelled)."""
        self._buffer.append(outcome)
        self._pending.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._pending.wait()
            await anyio.sleep(self._interval)  # let a batch gather
            await self.tick()

    async def tick(self) -> None:
        """Write what is buffered; on a database error keep it and wait before trying again."""
        try:
            await self.flush()
        except DatabaseError as exc:
            logger.warning("could not write %d job outcome(s), retrying in %gs: %s",
                           len(self._buffer), self._error_retry_delay, exc)
            await anyio.sleep(self._error_retry_delay)

    async def flush(self) -> None:
        """Write every buffered outcome now (raises DatabaseError, keeping the rest buffered)."""
        async with self._lock:
            self._pending = anyio.Event()
            while self._buffer:
                await self._write_head(min(len(self._buffer), self._batch_size))

    async def _write_head(self, count: int) -> None:
        """Write the first ``count`` buffered outcomes and take them out of the buffer. A batch
        refused for its data is written in halves (each taken out once written), so the written
        outcomes are always the buffer's head; an outcome refused alone is replaced."""
        batch = self._buffer[:count]
        try:
            accepted = await self._write(batch)
        except DataRejectedError as exc:
            if count > 1:
                await self._write_head(count // 2)
                await self._write_head(count - count // 2)
                return
            accepted = await self._write_instead(batch[0], exc)
        del self._buffer[:count]
        if any(o.workflow_id is not None for o in batch):
            stored = set(accepted)
            self.on_steps_ended({o.workflow_id for o in batch
                                 if o.workflow_id is not None and o.job_id in stored})
        if len(accepted) < count:
            self._refused(batch, set(accepted))
        if self._unsure:
            self._unsure.difference_update(o.job_id for o in batch)

    async def _write(self, batch: list[JobOutcome]) -> list[str]:
        try:
            with anyio.CancelScope(shield=True) as write:
                write.deadline = anyio.current_time() + WRITE_BOUND
                accepted = await self._backend.complete_jobs(batch)
            if write.cancelled_caught:
                raise DatabaseError(f"writing {len(batch)} job outcome(s) took longer "
                                    f"than {WRITE_BOUND:g}s")
        except DataRejectedError:
            raise  # the statement failed: nothing of it was written
        except BaseException:
            self._unsure.update(o.job_id for o in batch)
            self._pending.set()
            raise
        return accepted

    async def _write_instead(self, outcome: JobOutcome, exc: DataRejectedError) -> list[str]:
        """Write what ``on_unstorable`` makes of an outcome refused alone; the ids accepted (the
        job's own when the outcome is dropped: it is settled, not refused by the fence)."""
        instead = self.on_unstorable(outcome, exc.message)
        if instead is not None:
            logger.warning("the outcome of job %s could not be stored (%s); writing %s instead",
                           outcome.job_id, exc.message, instead.status.value)
            try:
                return await self._write([instead])
            except DataRejectedError as again:
                exc = again
        self.dropped += 1
        logger.error("the outcome of job %s could not be stored and is dropped (%s); the job "
                     "stays processing until this worker stops and it is rescued",
                     outcome.job_id, exc.message)
        return [outcome.job_id]

    def _refused(self, batch: list[JobOutcome], accepted: set[str]) -> None:
        refused = [o.job_id for o in batch if o.job_id not in accepted]
        rewritten = [job_id for job_id in refused if job_id in self._unsure]
        if rewritten:
            logger.info("%d outcome(s) were already written by an earlier attempt whose answer "
                        "was lost: %s", len(rewritten), ", ".join(rewritten))
        lost = [job_id for job_id in refused if job_id not in self._unsure]
        if lost:
            self.lease_lost += len(lost)
            logger.warning("lease lost: %d outcome(s) refused because the job's lease moved on "
                           "(rescued for another worker, or its claim undone by a database "
                           "crash): %s", len(lost), ", ".join(lost))
