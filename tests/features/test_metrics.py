"""Job metrics (``app.metrics``) on every backend, under asyncio and trio: counters, histograms,
the Prometheus text format, and nothing installed until asked."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from soniq import Soniq
from soniq.features.metrics import Metrics
from soniq.runtime import JobEvent
from tests.helpers import running_worker, wait_for_status

pytestmark = pytest.mark.anyio

#: One sample line of the text format 0.0.4: name{labels} value
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? '
                    r'(\S+)$')


def parse(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` for every sample; fails on a malformed line."""
    samples: dict[str, float] = {}
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "histogram") and name not in types
            types[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


async def test_counters_and_histograms_after_a_run(app: Soniq) -> None:
    metrics = app.metrics
    started = anyio.Event()

    @app.job(name="x")
    async def x() -> int:
        return 1

    @app.job(name="flaky", retries=1, retry_delay=0)
    async def flaky() -> None:
        raise RuntimeError("nope")

    @app.job(name="long", queue="slow")
    async def long() -> None:
        started.set()
        await anyio.sleep(60)

    ok = await app.enqueue(x)
    bad = await app.enqueue(flaky)
    slow = await app.enqueue(long)
    async with running_worker(app, concurrency=4):
        await wait_for_status(app, ok, "done")
        await wait_for_status(app, bad, "dead_letter")
        await started.wait()
        assert await app.request_cancel(slow) == "requested"
        await wait_for_status(app, slow, "cancelled")

    snap = metrics.snapshot()
    assert snap.count("enqueued") == 3
    assert snap.count("started") == 4  # x, flaky twice, long
    assert snap.count("done", queue="default", job_name="x") == 1
    assert snap.count("done") == 1
    assert snap.count("failed", job_name="flaky") == 1
    assert snap.count("dead_letter", job_name="flaky") == 1
    assert snap.count("cancelled", queue="slow", job_name="long") == 1
    duration = snap.histograms["duration"][("default", "x")]
    assert duration.count == 1 and duration.buckets[-1] == (math.inf, 1)
    assert sum(h.count for h in snap.histograms["queue_latency"].values()) == 4

    text = metrics.prometheus_text()
    samples = parse(text)
    assert 'soniq_jobs_done_total{queue="default",job_name="x"} 1' in text.splitlines()
    assert samples['soniq_jobs_enqueued_total{queue="default",job_name="x"}'] == 1
    assert samples['soniq_jobs_failed_total{queue="default",job_name="flaky"}'] == 1
    assert samples['soniq_jobs_dead_letter_total{queue="default",job_name="flaky"}'] == 1
    assert samples['soniq_jobs_cancelled_total{queue="slow",job_name="long"}'] == 1
    assert samples['soniq_job_duration_seconds_count{queue="default",job_name="x"}'] == 1
    assert samples['soniq_job_duration_seconds_bucket{queue="default",job_name="x",le="+Inf"}'] == 1
    assert samples['soniq_job_queue_latency_seconds_count{queue="default",job_name="flaky"}'] == 2
    assert "# TYPE soniq_jobs_done_total counter" in text
    assert "# TYPE soniq_job_duration_seconds histogram" in text


def test_histogram_buckets_are_cumulative_and_labels_escaped() -> None:
    metrics = Metrics(buckets=(0.1, 1.0))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for duration in (0.05, 0.5, 5.0):
        metrics.record(JobEvent("done", "id", 'we"ird\\name', "q", 1, at, duration))
    metrics.record(JobEvent("started", "id", "n", "q", 1, at,
                            scheduled_at=at - timedelta(seconds=0.5)))
    snap = metrics.snapshot()
    hist = snap.histograms["duration"][("q", 'we"ird\\name')]
    assert hist.buckets == ((0.1, 1), (1.0, 2), (math.inf, 3)) and hist.sum == pytest.approx(5.55)
    assert snap.histograms["queue_latency"][("q", "n")].buckets == ((0.1, 0), (1.0, 1), (math.inf, 1))
    samples = parse(metrics.prometheus_text())
    assert samples['soniq_job_duration_seconds_bucket{queue="q",job_name="we\\"ird\\\\name",le="1.0"}'] == 2
    metrics.reset()
    assert metrics.snapshot().count("done") == 0
    with pytest.raises(AttributeError):
        snap.counters = {}  # type: ignore[misc]  # frozen


async def test_nothing_is_subscribed_until_touched(app: Soniq) -> None:
    assert not app.events.active
    metrics = app.metrics
    assert app.events.active
    assert app.metrics is metrics
    app.metrics  # noqa: B018 -- touching again subscribes nothing more
    assert len(app.events._subscribers) == 1
