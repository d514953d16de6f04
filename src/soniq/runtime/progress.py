"""Writes running jobs' progress and checkpoints in batches, next to the finisher
(:mod:`.finisher`): running jobs hold no connection; one ``backend.job_states.save`` writes what
many jobs reported, fenced by each attempt's lease.

- ``ctx.progress(value)`` keeps only the latest value per attempt and returns at once; a value
  is written at most once per ``interval`` (1 s) per attempt, however often it is reported (the
  first one soon). A write the lease refused (the attempt was rescued and runs elsewhere) makes
  the attempt's next ``progress`` or ``checkpoint`` raise :class:`~soniq.errors.LeaseLostError`.
- ``ctx.checkpoint(state)`` encodes the state like a result (encrypted for ``encrypt=True``
  jobs) and returns once it is written: the checkpoints of every job that asked within a few
  milliseconds go in one statement, so a hundred jobs checkpointing at once take one connection
  for one write. Refused by the lease: :class:`~soniq.errors.LeaseLostError` at once. On a
  database error the batch stays and is written once the database is back.
- A durable function's steps (:mod:`soniq.features.durable`) go the same way as checkpoints:
  ``save_steps`` encodes each value like a result, waits for the batch's ``backend.steps.save``
  (fenced by each attempt's lease; refused: :class:`~soniq.errors.LeaseLostError`), and
  ``load_steps`` reads a function's saved steps once at its start.
- When a job ends, :meth:`JobStateWriter.settle` writes its last pending progress before its
  outcome is handed to the finisher (only for attempts that reported anything: a set lookup for
  the others).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from soniq.errors import DatabaseError, LeaseLostError, SerializationError, ValidationError
from soniq.runtime.finisher import WRITE_BOUND
from soniq.serialization import dumps, has_unstorable_chars, loads, longer_than
from soniq.types import JobState
from soniq.types.durable import StepRow, StepWrite

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from anyio.abc import TaskStatus

    from soniq.backends.base import JobStateStore
    from soniq.backends.steps import StepStore
    from soniq.runtime.seams import PayloadCodec
    from soniq.types import JobContext

__all__ = ["MAX_PROGRESS_BYTES", "JobStateWriter", "progress_text"]

logger = logging.getLogger("soniq.worker")

#: The largest progress object, as JSON.
MAX_PROGRESS_BYTES = 4096


def progress_text(value: Any) -> str:
    """``value`` as the JSON text ``ctx.progress`` stores: a number from 0 to 100 or a JSON
    object of at most :data:`MAX_PROGRESS_BYTES`; anything else is a ``ValidationError``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value <= 100:  # NaN too
            raise ValidationError(f"progress must be a number from 0 to 100 or a JSON object, "
                                  f"got {value!r}")
        return dumps(value)
    if not isinstance(value, Mapping):
        raise ValidationError(f"progress must be a number from 0 to 100 or a JSON object, got "
                              f"{type(value).__name__}")
    text = dumps(dict(value), what="progress")
    if longer_than(text, MAX_PROGRESS_BYTES) or has_unstorable_chars(text):
        raise ValidationError(f"progress must be a JSON object of at most {MAX_PROGRESS_BYTES} "
                              "bytes without NUL characters or lone surrogates")
    return text


@dataclass(slots=True)
class _Checkpoint:
    """One ``checkpoint`` (``text``) or ``save_steps`` (``steps``) call waiting for its write."""

    lease_id: str
    text: str
    done: anyio.Event = field(default_factory=anyio.Event)
    written: bool = False
    steps: StepWrite | None = None


class JobStateWriter:
    """The worker's :class:`~soniq.types.JobReporter`: buffers progress and checkpoints and
    flushes them with ``job_states.save``. ``clock`` (seconds, monotonic) paces progress."""

    def __init__(self, store: JobStateStore, codec: PayloadCodec, *, max_checkpoint_bytes: int,
                 interval: float = 1.0, gather: float = 0.005, error_retry_delay: float = 1.0,
                 clock: Callable[[], float] = anyio.current_time,
                 steps: StepStore | None = None) -> None:
        self._store = store
        self._steps = steps
        self._step_writes: list[_Checkpoint] = []
        self._codec = codec
        self._max_checkpoint = max_checkpoint_bytes
        self._interval = interval
        self._gather = gather
        self._error_retry_delay = error_retry_delay
        self._clock = clock
        self._ids: dict[str, str] = {}  # lease -> job id, for attempts that reported anything
        self._progress: dict[str, str] = {}  # lease -> latest progress not yet written
        self._next: dict[str, float] = {}  # lease -> when its next progress may be written
        self._checkpoints: list[_Checkpoint] = []
        self._lost: set[str] = set()  # leases a write was refused for
        self._flushed: dict[str, anyio.Event] = {}  # lease -> set once its progress is written
        self._wake = anyio.Event()
        self.writes = 0  # batches written (each one statement)
        self._running = False  # run() is writing

    # -- JobReporter ----------------------------------------------------------------------------
    async def progress(self, ctx: JobContext, value: Any) -> None:
        text = progress_text(value)
        lease = self._check(ctx)
        if lease not in self._progress:
            self._wake.set()
        self._progress[lease] = text
        await anyio.lowlevel.checkpoint()

    async def checkpoint(self, ctx: JobContext, state: Any) -> None:
        pending = _Checkpoint(self._check(ctx), self._encode(ctx, state, "the checkpoint"))
        await self._written(ctx, pending, self._checkpoints)

    async def load_steps(self, ctx: JobContext) -> list[StepRow]:
        if self._steps is None:
            return []
        return [step._replace(value=self._codec.decode_result(ctx.job_name, loads(step.value)))
                for step in await self._steps.load(ctx.job_id)]

    async def save_steps(self, ctx: JobContext, put: Sequence[StepRow],
                         drop: Sequence[str] = ()) -> None:
        if self._steps is None:
            return
        rows = tuple(step._replace(value=self._encode(ctx, step.value, f"step {step.step_key!r}"))
                     for step in put)
        write = StepWrite(ctx.job_id, ctx.lease_id, rows, tuple(drop))
        await self._written(ctx, _Checkpoint(self._check(ctx), "", steps=write), self._step_writes)

    async def _written(self, ctx: JobContext, pending: _Checkpoint,
                       queue: list[_Checkpoint]) -> None:
        """Queue a write and return once its batch ran; refused: LeaseLostError."""
        queue.append(pending)
        self._wake.set()
        await pending.done.wait()
        if not pending.written:
            self._lost.add(pending.lease_id)
            raise self._lost_error(ctx)

    def _encode(self, ctx: JobContext, value: Any, what: str) -> str:
        """``value`` encoded like a result, within ``max_result_bytes``."""
        text = self._codec.encode_result(ctx.job_name, value)
        if longer_than(text, self._max_checkpoint) or has_unstorable_chars(text):
            raise SerializationError(
                f"{what} of job {ctx.job_name!r} cannot be stored: its JSON takes more than "
                f"max_result_bytes ({self._max_checkpoint:,} bytes) or holds a NUL character "
                "or a lone surrogate")
        return text

    def _check(self, ctx: JobContext) -> str:
        """The attempt's lease, once it is known to hold no more: LeaseLostError."""
        if ctx.lease_id in self._lost:
            raise self._lost_error(ctx)
        self._ids[ctx.lease_id] = ctx.job_id
        return ctx.lease_id

    @staticmethod
    def _lost_error(ctx: JobContext) -> LeaseLostError:
        return LeaseLostError(f"job {ctx.job_id} ({ctx.job_name}), attempt {ctx.attempt}, lost "
                              "its lease (it was rescued and runs elsewhere, or it ended): its "
                              "progress or checkpoint was refused; this attempt must stop")

    # -- the end of an attempt ------------------------------------------------------------------
    def reported(self, lease_id: str) -> bool:
        """Whether the attempt reported anything (its end must go through :meth:`settle`)."""
        return lease_id in self._ids

    async def settle(self, lease_id: str) -> None:
        """Have the attempt's pending progress written with the next batch and wait for it
        (bounded: the outcome matters more), then forget the attempt."""
        if lease_id in self._progress and self._running:  # (not while the worker is torn down)
            self._next[lease_id] = 0.0
            written = self._flushed.setdefault(lease_id, anyio.Event())
            self._wake.set()
            with anyio.move_on_after(WRITE_BOUND):
                await written.wait()
        self.forget(lease_id)

    def forget(self, lease_id: str) -> None:
        """Drop everything kept for an ended attempt (no I/O)."""
        self._ids.pop(lease_id, None)
        self._progress.pop(lease_id, None)
        self._next.pop(lease_id, None)
        self._lost.discard(lease_id)
        self._flushed.pop(lease_id, None)

    # -- the loop -------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self._running = True
        try:
            await self._loop()
        finally:
            self._running = False

    async def _loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            try:
                due_in = await self._write()
            except DatabaseError as exc:
                logger.warning("could not write job progress or checkpoints, retrying in %gs: "
                               "%s", self._error_retry_delay, exc)
                await anyio.sleep(self._error_retry_delay)
                continue
            with anyio.move_on_after(float("inf") if due_in is None else due_in):
                await self._wake.wait()
            await anyio.sleep(self._gather)  # let a batch gather

    async def _write(self) -> float | None:
        """Write the checkpoints waiting and the progress that is due; seconds until the next
        pending progress is due (None: none pending). On a database error everything stays
        buffered."""
        now = self._clock()
        if self._checkpoints:  # of attempts that ended while waiting: dropped
            for pending in self._checkpoints:
                if pending.lease_id not in self._ids:
                    pending.done.set()
            self._checkpoints = [p for p in self._checkpoints if p.lease_id in self._ids]
        if self._step_writes:
            await self._write_steps()
        due = [lease for lease in self._progress if self._next.get(lease, 0.0) <= now]
        checkpoints = self._checkpoints[:]
        if due or checkpoints:
            states: dict[str, JobState] = {lease: JobState("", lease, self._progress[lease])
                                           for lease in due}
            for pending in checkpoints:  # the latest checkpoint of an attempt wins
                states[pending.lease_id] = JobState(
                    "", pending.lease_id, self._progress.get(pending.lease_id)
                    if pending.lease_id in states else None, pending.text)
            written = await self._save(states)
            self.writes += 1
            for lease in due:
                if self._progress.get(lease) == states[lease].progress:  # nothing newer came
                    del self._progress[lease]
                    if lease in self._flushed:
                        self._flushed.pop(lease).set()
                if lease in self._ids and lease not in self._flushed:  # (settling: due now)
                    self._next[lease] = now + self._interval
            del self._checkpoints[:len(checkpoints)]
            for pending in checkpoints:
                pending.written = pending.lease_id in written
                pending.done.set()
            for lease in states:
                if lease not in written and lease in self._ids:
                    self._lost.add(lease)
                    self._progress.pop(lease, None)
                    if lease in self._flushed:
                        self._flushed.pop(lease).set()
        if not self._progress:
            return None
        return max(0.0, min(self._next.get(lease, 0.0) for lease in self._progress) - now)

    async def _write_steps(self) -> None:
        """One ``steps.save`` for the step writes waiting (those of ended attempts dropped)."""
        assert self._steps is not None
        pending = [p for p in self._step_writes if p.lease_id in self._ids]
        for dropped in self._step_writes:
            if dropped.lease_id not in self._ids:
                dropped.done.set()
        self._step_writes = pending[:]
        writes = [p.steps for p in pending if p.steps is not None]
        written = await _bounded(self._steps.save(writes), f"the steps of {len(writes)} job(s)")
        self.writes += 1
        del self._step_writes[:len(pending)]
        for p in pending:
            p.written = p.steps is not None and p.steps.job_id in written
            p.done.set()

    async def _save(self, states: dict[str, JobState]) -> set[str]:
        """One ``save``; the leases written. Never abandoned half-way by cancellation."""
        batch = [state._replace(job_id=self._ids[lease]) for lease, state in states.items()]
        written = await _bounded(self._store.save(batch), f"the progress of {len(batch)} job(s)")
        return {state.lease_id for state in batch if state.job_id in written}


async def _bounded(write: Awaitable[list[str]], what: str) -> set[str]:
    """The ids a write returned; never abandoned half-way by cancellation, bounded by
    ``WRITE_BOUND`` (then DatabaseError)."""
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + WRITE_BOUND
        written = set(await write)
    if scope.cancelled_caught:
        raise DatabaseError(f"writing {what} took longer than {WRITE_BOUND:g}s")
    return written
