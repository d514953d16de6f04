"""OpenTelemetry spans for jobs, when ``opentelemetry-api`` is installed (``pip install
'soniq[otel]'``).

``app.tracing`` turns them on for that app the first time it is touched:

- a **producer** span ``send <queue>`` around every ``enqueue`` / ``enqueue_many`` (``app.sync``
  included: a child of the calling thread's current span);
- a **consumer** span ``process <queue>`` around every attempt a worker of this app runs (a
  middleware, outermost after log capture), ended with an error status when the job raises.

Attributes follow OpenTelemetry's messaging conventions: ``messaging.system`` = ``soniq``,
``messaging.operation.type`` (``send`` / ``process``), ``messaging.destination.name`` (the queue),
``messaging.message.id`` (the job id; ``messaging.batch.message_count`` for a bulk send), plus
``soniq.job.name`` and ``soniq.job.attempt``. Spans go to the global tracer provider unless
:meth:`Tracing.use` names another. The trace context does not travel with the job (arguments stay
exactly what the caller passed): correlate producer and consumer by ``messaging.message.id``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq._version import __version__
from soniq.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractContextManager

    from soniq.types import JobContext

__all__ = ["Tracing"]


class Tracing:
    """Makes the spans; see the module docstring. Build it through ``app.tracing``."""

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError:
            raise ConfigurationError(
                "app.tracing needs the OpenTelemetry API: pip install 'soniq[otel]'"
            ) from None
        self._trace = trace
        self._tracer: Any = None
        self.use(tracer_provider)

    def use(self, tracer_provider: Any) -> None:
        """Send spans to ``tracer_provider`` (None: the global one)."""
        self._tracer = self._trace.get_tracer("soniq", __version__, tracer_provider=tracer_provider)

    def send(self, queue: str, job_name: str, count: int,
             job_id: str | None = None) -> AbstractContextManager[Any]:
        """The producer span around writing ``count`` jobs (``job_id``: the first one's id)."""
        attributes: dict[str, Any] = {
            "messaging.system": "soniq", "messaging.operation.type": "send",
            "messaging.destination.name": queue, "soniq.job.name": job_name,
        }
        if count == 1 and job_id is not None:
            attributes["messaging.message.id"] = job_id
        else:
            attributes["messaging.batch.message_count"] = count
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            f"send {queue}", kind=self._trace.SpanKind.PRODUCER, attributes=attributes)
        return span

    async def process(self, ctx: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        """Middleware: the consumer span around one attempt."""
        with self._tracer.start_as_current_span(
                f"process {ctx.queue}", kind=self._trace.SpanKind.CONSUMER,
                attributes={"messaging.system": "soniq", "messaging.operation.type": "process",
                            "messaging.destination.name": ctx.queue,
                            "messaging.message.id": ctx.job_id, "soniq.job.name": ctx.job_name,
                            "soniq.job.attempt": ctx.attempt}):
            return await call_next()
