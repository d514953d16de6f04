"""The seams features plug into, so the runtime never imports a feature (DESIGN.md §2).

- :class:`Service`: any loop the worker should run in its task group (scheduler, webhook delivery).
- :class:`EventDispatcher`: job lifecycle events (enqueued, started, done, failed, dead_letter,
  cancelled) for webhooks, logs and metrics. With no subscriber, emitting costs one branch.
- :class:`PayloadCodec`: how arguments and results become stored text and back (encryption wraps
  the JSON codec).
- :class:`Hooks`: ``before_job``/``after_job``/``on_error`` callbacks and ``@app.middleware``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, get_args, runtime_checkable

from soniq.serialization import dumps, loads, utc_now

if TYPE_CHECKING:
    from datetime import datetime

    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.types import CancelOutcome, JobContext

__all__ = [
    "EventDispatcher",
    "Hooks",
    "JobEvent",
    "JsonCodec",
    "Middleware",
    "PayloadCodec",
    "Service",
]

logger = logging.getLogger("soniq.runtime")

EventKind = Literal["enqueued", "started", "done", "failed", "dead_letter", "cancelled"]


@runtime_checkable
class Service(Protocol):
    """A loop that lives in every worker's task group (e.g. the cron scheduler)."""

    name: str

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Call ``task_status.started()`` once ready, then loop until cancelled."""
        ...


class JobEvent(NamedTuple):
    """Something happened to a job. ``error`` is set for ``failed`` / ``dead_letter``,
    ``duration`` (seconds) for ``done``, ``scheduled_at`` for ``started``. A named tuple: the
    runtime builds two a job while anyone listens, and a frozen dataclass cost three times as
    much to build."""

    kind: EventKind
    job_id: str
    job_name: str
    queue: str
    attempt: int
    at: datetime
    duration: float | None = None
    error: str | None = None
    #: When the job was due (set on ``started``: queue latency is ``at - scheduled_at``).
    scheduled_at: datetime | None = None


class EventDispatcher:
    """Fan-out of :class:`JobEvent` to subscribers; a subscriber's exception is logged, never
    raised into the job. Callers ask :meth:`wants` first and build no event nobody listens to."""

    def __init__(self) -> None:
        self._subscribers: list[tuple[Callable[[JobEvent], None], frozenset[str] | None]] = []
        self._by_kind: dict[str, list[Callable[[JobEvent], None]]] = {}
        self._step_subscribers: list[Callable[[str], None]] = []

    # -- workflow steps: "a step of this workflow ended, and that is stored" ---------------------
    def subscribe_steps(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(workflow_id)`` after a final outcome (done, dead-lettered,
        cancelled) of a step of that workflow is stored, by this process's worker or
        ``app.workflows.cancel``; it must not block. Several steps may be reported at once."""
        if callback not in self._step_subscribers:
            self._step_subscribers.append(callback)

    def unsubscribe_steps(self, callback: Callable[[str], None]) -> None:
        self._step_subscribers = [c for c in self._step_subscribers if c != callback]

    @property
    def wants_steps(self) -> bool:
        return bool(self._step_subscribers)

    def steps_ended(self, workflow_ids: Iterable[str]) -> None:
        for workflow_id in workflow_ids:
            for callback in self._step_subscribers:
                try:
                    callback(workflow_id)
                except Exception:
                    logger.exception("step subscriber %r failed on %s", callback, workflow_id)

    def subscribe(self, callback: Callable[[JobEvent], None], *,
                  kinds: Iterable[EventKind] | None = None) -> None:
        """Call ``callback(event)`` for every event (only those of ``kinds``, when given); it
        must not block (buffer and return). Subscribing again replaces the kinds."""
        self._subscribers = [(c, k) for c, k in self._subscribers if c != callback]
        self._subscribers.append((callback, None if kinds is None else frozenset(kinds)))
        self._index()

    def unsubscribe(self, callback: Callable[[JobEvent], None]) -> None:
        """Stop calling ``callback`` (no error if it was not subscribed)."""
        self._subscribers = [(c, k) for c, k in self._subscribers if c != callback]
        self._index()

    def _index(self) -> None:
        self._by_kind = {kind: [c for c, kinds in self._subscribers
                                if kinds is None or kind in kinds] for kind in get_args(EventKind)}

    @property
    def active(self) -> bool:
        """False when nobody listens to anything."""
        return bool(self._subscribers)

    def wants(self, kind: EventKind) -> bool:
        """Whether anyone listens to ``kind`` events."""
        return bool(self._by_kind.get(kind))

    def emit(self, event: JobEvent) -> None:
        for callback in self._by_kind.get(event.kind, ()):
            try:
                callback(event)
            except Exception:
                logger.exception("event subscriber %r failed on %s", callback, event.kind)


async def cancel_job(backend: StorageBackend, events: EventDispatcher,
                     job_id: str, *, step_ended: bool = True) -> CancelOutcome | None:
    """``request_cancel`` for the app and its sync facade: a waiting job that ends here is
    reported as a ``cancelled`` event, and -- unless ``step_ended`` is False (the caller
    announces its workflow itself) -- as a step that ended when it belongs to a workflow (a
    running one's come from its worker when it stops)."""
    outcome = await backend.cancel_job(job_id)
    steps = step_ended and events.wants_steps
    if outcome == "cancelled" and (events.wants("cancelled") or steps):
        record = await backend.get_job(job_id)
        if record is not None and record["status"] == "cancelled":
            if events.wants("cancelled"):
                events.emit(JobEvent("cancelled", job_id, record["job_name"], record["queue"],
                                     record["attempts"], utc_now()))
            if steps and record["workflow_id"] is not None:
                events.steps_ended([record["workflow_id"]])
    return outcome


class PayloadCodec(Protocol):
    """Turns job arguments and results into stored text and back."""

    def encode_args(self, job_name: str, args_json: str) -> str: ...
    def decode_args(self, job_name: str, stored: str) -> dict[str, Any]: ...
    def encode_result(self, job_name: str, value: Any) -> str: ...
    def decode_result(self, job_name: str, value: Any, *, encrypted: bool = False) -> Any:
        """A stored result (already JSON-decoded) in plain form."""
        ...


class JsonCodec:
    """Plain JSON: arguments are stored as validated at enqueue, results as strict JSON."""

    def encode_args(self, job_name: str, args_json: str) -> str:
        return args_json

    def decode_args(self, job_name: str, stored: str) -> dict[str, Any]:
        value = loads(stored)
        if not isinstance(value, dict):
            raise TypeError(f"stored arguments are a {type(value).__name__}, not an object")
        return value

    def encode_result(self, job_name: str, value: Any) -> str:
        return dumps(value, what=f"the result of job {job_name!r}")

    def decode_result(self, job_name: str, value: Any, *, encrypted: bool = False) -> Any:
        return value


#: ``async def middleware(ctx, call_next)``: wraps every job; return what ``call_next()`` returns
#: (or a replacement). The first registered is the outermost.
Middleware = Callable[["JobContext", Callable[[], Awaitable[Any]]], Awaitable[Any]]


@dataclass(slots=True)
class Hooks:
    """Callbacks around every job. Hooks may be sync or async; a hook's exception fails the job
    like the job's own exception would (``on_error`` exceptions are only logged)."""

    before_job: list[Callable[..., Any]] = field(default_factory=list)
    after_job: list[Callable[..., Any]] = field(default_factory=list)
    on_error: list[Callable[..., Any]] = field(default_factory=list)
    middleware: list[Middleware] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.before_job or self.after_job or self.on_error or self.middleware)


async def call_hook(hook: Callable[..., Any], *args: Any) -> None:
    result = hook(*args)
    if inspect.isawaitable(result):
        await result
