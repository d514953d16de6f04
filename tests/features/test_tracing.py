"""OpenTelemetry spans: a producer span per enqueue, a consumer span per attempt (with the error
recorded), on every backend. The SDK's in-memory exporter collects what a real exporter would get."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from soniq import Soniq
from soniq.errors import ConfigurationError
from soniq.runtime import JobEvent
from soniq.types import JobStream, NewJob

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def test_spans_for_send_and_process(app: Soniq, exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app.tracing.use(provider)

    @app.job(name="ok", queue="mail")
    async def ok(n: int) -> int:
        return n

    @app.job(name="boom", retries=0)
    async def boom() -> None:
        raise ValueError("no luck")

    ok_id = await app.enqueue(ok, n=1)
    await app.enqueue_many(ok, [{"n": 2}, {"n": 3}])
    boom_id = await app.enqueue(boom)
    assert await app.run_worker(run_once=True) == 4

    spans = exporter.get_finished_spans()
    sends = [s for s in spans if s.kind is SpanKind.PRODUCER]
    assert [s.name for s in sends] == ["send mail", "send mail", "send default"]
    assert sends[0].attributes is not None and sends[1].attributes is not None
    assert sends[0].attributes["messaging.message.id"] == ok_id
    assert sends[0].attributes["messaging.system"] == "soniq"
    assert sends[1].attributes["messaging.batch.message_count"] == 2

    processed = {s.attributes["messaging.message.id"]: s for s in spans  # type: ignore[index]
                 if s.kind is SpanKind.CONSUMER}
    assert len(processed) == 4
    assert processed[ok_id].name == "process mail"
    assert processed[ok_id].attributes["soniq.job.attempt"] == 1  # type: ignore[index]
    assert processed[ok_id].status.status_code is StatusCode.UNSET
    failed = processed[boom_id]
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert "no luck" in str(failed.events[0].attributes)


async def test_sync_enqueue_sends_the_same_span_and_events(
        app: Soniq, exporter: InMemorySpanExporter) -> None:
    """``app.sync`` goes through the app's producer: the same ``send`` span (a child of the
    calling thread's current span) and the same ``enqueued`` events as ``await app.enqueue``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app.tracing.use(provider)
    events: list[JobEvent] = []
    app.events.subscribe(events.append, kinds=["enqueued"])

    @app.job(name="ok", queue="mail")
    def ok(n: int) -> int:
        return n

    async_ids = [await app.enqueue(ok, n=1), *await app.enqueue_many(ok, [{"n": 2}, {"n": 3}])]

    def from_a_view() -> list[str]:
        with provider.get_tracer("view").start_as_current_span("view"):
            return [app.sync.enqueue(ok, n=1), *app.sync.enqueue_many(ok, [{"n": 2}, {"n": 3}])]

    sync_ids = await anyio.to_thread.run_sync(from_a_view)

    spans = exporter.get_finished_spans()
    sends = [s for s in spans if s.kind is SpanKind.PRODUCER]
    shapes = [(s.name, {k: v for k, v in (s.attributes or {}).items()
                        if k != "messaging.message.id"}) for s in sends]
    assert len(sends) == 4 and shapes[2:] == shapes[:2]
    assert [(s.attributes or {}).get("messaging.message.id") for s in sends] == [
        async_ids[0], None, sync_ids[0], None]
    [view] = [s for s in spans if s.name == "view"]
    assert {s.parent.span_id for s in sends[2:] if s.parent} == {view.context.span_id}
    assert [(e.kind, e.job_id, e.job_name, e.queue, e.attempt) for e in events] == [
        ("enqueued", job_id, "ok", "mail", 0) for job_id in async_ids + sync_ids]


def test_tracing_is_off_until_touched() -> None:
    app = Soniq(backend="memory")
    assert app.hooks.middleware == []
    app.tracing  # noqa: B018
    assert len(app.hooks.middleware) == 1


def test_without_the_api_installed_it_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails as if not installed
    app = Soniq(backend="memory")
    with pytest.raises(ConfigurationError, match=r"pip install 'soniq\[otel\]'"):
        app.tracing  # noqa: B018
    assert app.hooks.middleware == []


def test_the_send_span_of_a_stream_builds_no_job(exporter: InMemorySpanExporter) -> None:
    """``enqueue_many`` streams its jobs to PostgreSQL as they are built; the producer span must
    not read the stream first (that would build, and hold, every job before the write)."""
    app = Soniq(backend="memory")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app.tracing.use(provider)
    read: list[int] = []

    def rows() -> Iterator[NewJob]:
        read.append(1)
        raise AssertionError("the span read the stream")
        yield  # pragma: no cover

    stream = JobStream(3, rows(), job_name="bulk", queue="mail", scheduled_at=None)
    with app.producer._span(stream):
        pass
    assert read == []
    [span] = exporter.get_finished_spans()
    assert span.name == "send mail"
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 3
    assert span.attributes["soniq.job.name"] == "bulk"
