"""Durable functions (``@app.durable``): a job whose steps are saved, so a later attempt replays
them instead of running them again, and whose sleeps give the worker slot back.

A durable function is an ordinary job (every ``@app.job`` option applies, its id is a job id):
:func:`durable_job` wraps it into one that builds a :class:`DurableContext`, reads the saved steps
once (``backend.steps.load`` through the worker's :class:`~soniq.runtime.progress.JobStateWriter`:
plain jobs never read them) and runs the function.

- ``ctx.step(fn, *args, name=None, **kwargs)`` takes its key (``name`` or ``fn``'s qualified name,
  numbered per name: ``fetch#1``, ``fetch#2``) and its position *when it is called*, not when it
  is awaited, so steps started together (an AnyIO task group) replay the same way whatever order
  they finish in. A saved step returns its saved result (or raises its saved error as
  :class:`~soniq.errors.StepFailedError`) without running; a new one runs (a sync ``fn`` in a
  worker thread), and its result or error is written (``INSERT ... ON CONFLICT DO NOTHING``,
  fenced by the attempt's lease, batched with other jobs' writes) before it returns.
- A step whose key, function or argument digest differs from the saved step at its position
  raises :class:`~soniq.errors.NonDeterminismError` (kept: the function fails with it even if
  the code catches it), and the executor dead-letters the job at once.
- ``ctx.sleep`` / ``ctx.sleep_until`` save the wake time as a step (``sleep#n``) and end the
  attempt like a returned :class:`~soniq.types.Snooze`: queued until then, no attempt used, no
  slot or connection held. A replay passes the sleep once its wake time has come, else sleeps
  again for the rest (never early).
- A :class:`~soniq.errors.StepFailedError` that escapes the function drops its saved error
  (a fenced write before the attempt's outcome), so the retry runs the step again.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import json
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from soniq.errors import ConfigurationError, NonDeterminismError, StepFailedError, ValidationError
from soniq.serialization import dumps, loads, utc_now
from soniq.types import JobContext, Snooze
from soniq.types.durable import StepRow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Sequence

__all__ = ["DurableContext", "durable_job"]

F = TypeVar("F", bound="Callable[..., Any]")

#: The key of the step running in the current task (``ctx.idempotency_key()`` reads it).
_current_step: ContextVar[str | None] = ContextVar("soniq_durable_step", default=None)


class _Suspend(BaseException):
    """Ends the attempt until ``wake`` (a sleep): a BaseException, so ``except Exception`` in
    the function does not swallow it."""

    def __init__(self, wake: datetime) -> None:
        super().__init__(wake)
        self.wake = wake


@dataclass(slots=True)
class _Replay:
    """A run's saved history and what this attempt has reached of it (mutable state of the
    frozen context)."""

    by_key: dict[str, StepRow] = field(default_factory=dict)
    by_position: dict[int, StepRow] = field(default_factory=dict)
    position: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    raised: list[StepFailedError] = field(default_factory=list)
    markers: list[StepRow] = field(default_factory=list)  # new ``patched`` markers, unsaved
    violation: NonDeterminismError | None = None

    def key(self, name: str) -> str:
        number = self.counts.get(name, 0) + 1
        self.counts[name] = number
        return f"{name}#{number}"

    def last_position(self) -> int:
        return max(self.by_position, default=-1)


@dataclass(frozen=True, slots=True)
class DurableContext(JobContext):
    """The :class:`~soniq.types.JobContext` of a durable function (its first parameter), with
    ``step``, ``sleep``, ``sleep_until``, ``patched`` and ``idempotency_key``."""

    _replay: _Replay = field(default_factory=_Replay, repr=False, compare=False)

    # -- steps ------------------------------------------------------------------------------------
    def step(self, fn: Callable[..., Any], /, *args: Any, name: str | None = None,
             **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Run ``fn(*args, **kwargs)`` (sync or async) once per durable run and return its
        result (JSON, as saved); later attempts return the saved result without running it.
        Its error is saved too and raised as :class:`~soniq.errors.StepFailedError`, now and
        on replays. The key is taken here, when called: create the steps in a fixed order,
        then await them in any order (a task group)."""
        if not callable(fn):
            raise ValidationError(f"ctx.step() takes a function, got {fn!r}")
        label = name if name is not None else _qualname(fn)
        if not isinstance(label, str) or not label:
            raise ValidationError(f"a step's name must be a non-empty string, got {label!r}")
        row = StepRow(self._replay.key(label), self._take_position(), _function_name(fn),
                      _digest(args, kwargs), "done")
        saved = self._match(row)
        return self._run(row, saved, fn, args, kwargs)

    async def _run(self, row: StepRow, saved: StepRow | None, fn: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if saved is not None:
            if saved.status == "error":
                raise self._failure(saved.step_key, saved.value)
            return saved.value
        token = _current_step.set(row.step_key)
        try:
            result = await _call(fn, args, kwargs)
        except Exception as exc:
            error = {"type": type(exc).__qualname__, "message": str(exc)}
            await self._save(row._replace(status="error", value=error))
            raise self._failure(row.step_key, error) from exc
        finally:
            _current_step.reset(token)
        value = loads(dumps(result, what=f"the result of step {row.step_key!r}"))
        await self._save(row._replace(value=value))
        return value

    def _failure(self, key: str, error: dict[str, str]) -> StepFailedError:
        failure = StepFailedError(key, str(error.get("type")), str(error.get("message")))
        self._replay.raised.append(failure)
        return failure

    # -- sleeps -----------------------------------------------------------------------------------
    async def sleep(self, duration: timedelta | float) -> None:
        """Suspend the function for ``duration`` (a timedelta or seconds): the attempt ends and
        gives its slot back without using an attempt; the job runs again at the wake time and
        the replay passes this sleep."""
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not seconds >= 0:
            raise ValidationError(f"ctx.sleep() takes a timedelta or seconds >= 0, got "
                                  f"{duration!r}")
        await self._sleep(lambda now: now + timedelta(seconds=seconds))

    async def sleep_until(self, when: datetime) -> None:
        """Suspend the function until ``when`` (a timezone-aware datetime); see :meth:`sleep`."""
        if not isinstance(when, datetime) or when.utcoffset() is None:
            raise ValidationError(f"ctx.sleep_until() takes a timezone-aware datetime, got "
                                  f"{when!r}")
        await self._sleep(lambda now: when)

    async def _sleep(self, wake_at: Callable[[datetime], datetime]) -> None:
        row = StepRow(self._replay.key("sleep"), self._take_position(), "sleep", "", "sleep")
        saved = self._match(row)
        now = utc_now()
        if saved is None:
            wake = wake_at(now)
            await self._save(row._replace(value=wake.isoformat()))
        else:
            wake = datetime.fromisoformat(saved.value)
        if wake > now:
            raise _Suspend(wake)

    # -- code changes -----------------------------------------------------------------------------
    def patched(self, name: str) -> bool:
        """True when this run reaches this point for the first time with the changed code (a
        marker is saved), False when it replays a history written before the change."""
        replay = self._replay
        number = replay.counts.get(f"patched:{name}", 0) + 1
        key = f"patched:{name}#{number}"
        position = replay.position
        if key not in replay.by_key and position <= replay.last_position():
            return False  # an older history: it has another step here, or steps after
        replay.counts[f"patched:{name}"] = number
        row = StepRow(key, self._take_position(), "patched", "", "marker")
        if self._match(row) is None:  # saved with the next step's write
            replay.markers.append(row)
        return True

    def idempotency_key(self, step_key: str | None = None) -> str:
        """A key stable across attempts for an external API called inside a step: the job id
        and the step's key (``step_key``, else the step running now)."""
        key = step_key if step_key is not None else _current_step.get()
        if key is None:
            raise ValidationError("ctx.idempotency_key() without step_key= must be called "
                                  "inside a step")
        return f"{self.job_id}:{key}"

    # -- the history ------------------------------------------------------------------------------
    def _take_position(self) -> int:
        position = self._replay.position
        self._replay.position += 1
        return position

    def _match(self, row: StepRow) -> StepRow | None:
        """The saved step for ``row`` (None: new); NonDeterminismError when the history has
        another step at its position, or this key with another function or arguments."""
        replay = self._replay
        saved = replay.by_key.get(row.step_key)
        at = replay.by_position.get(row.position)
        if saved is None and at is None:
            return None
        if saved is not None and saved is at and saved[:4] == row[:4]:
            return saved
        if at is not None and at.step_key != row.step_key:
            other, what = at, "another step was saved at this position"
        else:
            assert saved is not None
            other = saved
            what = ("its arguments changed" if saved.function == row.function
                    and saved.position == row.position else "its function changed"
                    if saved.position == row.position else "it was saved at another position")
        error = NonDeterminismError(
            f"job {self.job_id} ({self.job_name}): step {row.step_key!r} ({row.function}) at "
            f"position {row.position} does not match the saved step {other.step_key!r} "
            f"({other.function}) at position {other.position}: {what}; the code changed "
            "under a running function (guard such changes with ctx.patched())")
        if replay.violation is None:
            replay.violation = error
        raise error

    async def _save(self, row: StepRow) -> None:
        markers, self._replay.markers = self._replay.markers, []
        if self.reporter is not None:
            await self.reporter.save_steps(self, [*markers, row])


def _qualname(fn: Callable[..., Any]) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else fn
    return str(getattr(inner, "__qualname__", None) or type(inner).__qualname__)


def _function_name(fn: Callable[..., Any]) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else fn
    return f"{getattr(inner, '__module__', None) or ''}.{_qualname(inner)}".lstrip(".")


def _digest(args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """A digest of a step's arguments: their canonical JSON (a value JSON cannot hold counts by
    its type's name, so an object argument never makes the replay depend on its address)."""
    text = json.dumps([list(args), kwargs], sort_keys=True, separators=(",", ":"),
                      default=lambda value: f"<{type(value).__qualname__}>")
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "func", None)):
        return await fn(*args, **kwargs)
    context = contextvars.copy_context()  # the step's key, for idempotency_key in the thread
    result = await anyio.to_thread.run_sync(
        functools.partial(context.run, functools.partial(fn, *args, **kwargs)))
    if inspect.isawaitable(result):
        return await result
    return result


def durable_job(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The job ``@app.durable`` registers for ``fn`` (an ``async def`` whose first parameter
    takes the :class:`DurableContext`): it takes the worker's ``JobContext`` in that
    parameter, builds the durable context with the saved steps and runs ``fn``."""
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(f"@app.durable() decorates an async function, not {fn!r}")
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            inspect.Parameter.KEYWORD_ONLY):
        raise ConfigurationError(f"durable function {_qualname(fn)} must take the "
                                 "DurableContext as its first parameter (ctx: DurableContext)")
    ctx_name = params[0].name

    @functools.wraps(fn)
    async def job(**kwargs: Any) -> Any:
        ctx = await _start(kwargs.pop(ctx_name))
        try:
            result = await fn(**{ctx_name: ctx}, **kwargs)
        except _Suspend as suspend:
            _raise_violation(ctx)
            return Snooze((suspend.wake - utc_now()).total_seconds(), reason="durable sleep")
        except Exception as exc:
            _raise_violation(ctx, exc)
            if isinstance(exc, StepFailedError) and exc in ctx._replay.raised:
                await _drop(ctx, exc)
            raise
        except BaseExceptionGroup as group:  # (of BaseExceptions: ExceptionGroups went above)
            if group.subgroup(_Suspend) is None:
                raise
            raise NonDeterminismError(  # its position would depend on the tasks' timing
                f"job {ctx.job_id} ({ctx.job_name}) slept inside a task group: call ctx.sleep "
                "in the function's own flow") from None
        _raise_violation(ctx)
        return result

    job.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[params[0].replace(annotation=JobContext), *params[1:]])
    job.__annotations__ = {**fn.__annotations__, ctx_name: JobContext}
    return job


async def _start(base: JobContext) -> DurableContext:
    """The durable context of this attempt, with its saved steps (one read)."""
    ctx = DurableContext(**{f.name: getattr(base, f.name) for f in fields(JobContext)})
    if ctx.reporter is not None:
        for row in await ctx.reporter.load_steps(ctx):
            ctx._replay.by_key[row.step_key] = row
            ctx._replay.by_position[row.position] = row
    return ctx


async def _drop(ctx: DurableContext, failure: StepFailedError) -> None:
    """The escaped step error is dropped, so the retry runs the step again."""
    if ctx.reporter is not None:
        await ctx.reporter.save_steps(ctx, [], [failure.step_key])


def _raise_violation(ctx: DurableContext, cause: BaseException | None = None) -> None:
    """A non-determinism error ends the function even if its code caught it."""
    violation = ctx._replay.violation
    if violation is not None and violation is not cause:
        raise violation
