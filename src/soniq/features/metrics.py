"""In-process job metrics: counters and histograms fed by the app's lifecycle events.

``app.metrics`` subscribes once to ``app.events`` when first touched; until then nothing is
installed and nothing is counted. Everything is per process and per app (no global registry):
export it with :meth:`Metrics.prometheus_text` (Prometheus text exposition format 0.0.4) from
your own HTTP endpoint, or read :meth:`Metrics.snapshot`.

- ``soniq_jobs_<kind>_total{queue, job_name}`` for each event kind: ``enqueued``, ``started``,
  ``done``, ``failed`` (an attempt failed and will be retried), ``dead_letter``, ``cancelled``;
- ``soniq_job_duration_seconds{queue, job_name}``: how long each successful attempt ran;
- ``soniq_job_queue_latency_seconds{queue, job_name}``: start time minus ``scheduled_at`` (how
  long a due job waited for a worker).

Counts are what this process saw: enqueues made here, attempts run by this process's workers.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from soniq.runtime.seams import JobEvent

__all__ = ["DEFAULT_BUCKETS", "EVENT_KINDS", "HistogramSnapshot", "Metrics", "MetricsSnapshot"]

#: The counter kinds, in exposition order.
EVENT_KINDS = ("enqueued", "started", "done", "failed", "dead_letter", "cancelled")
#: Histogram bucket upper bounds in seconds (``+Inf`` is implied).
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 900.0, 3600.0)

_HELP = {
    "enqueued": "Jobs enqueued by this process.",
    "started": "Job attempts started by this process's workers.",
    "done": "Job attempts that finished successfully.",
    "failed": "Job attempts that failed and will be retried.",
    "dead_letter": "Jobs moved to the dead-letter queue.",
    "cancelled": "Jobs cancelled while running.",
}
_HISTOGRAMS = {
    "duration": ("soniq_job_duration_seconds", "Run time of successful job attempts."),
    "queue_latency": ("soniq_job_queue_latency_seconds",
                      "Seconds from a job's scheduled_at to the start of its attempt."),
}

Labels = tuple[str, str]  # (queue, job_name)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """One histogram series: ``buckets`` are cumulative ``(upper_bound, count)`` pairs."""

    count: int
    sum: float
    buckets: tuple[tuple[float, int], ...]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A copy of the metrics at one moment. ``counters[kind][(queue, job_name)]`` and
    ``histograms[name][(queue, job_name)]`` with name ``duration`` or ``queue_latency``."""

    counters: Mapping[str, Mapping[Labels, int]]
    histograms: Mapping[str, Mapping[Labels, HistogramSnapshot]]

    def count(self, kind: str, *, queue: str | None = None, job_name: str | None = None) -> int:
        """The counter ``kind`` summed over the series matching ``queue``/``job_name``."""
        return sum(value for (q, name), value in self.counters.get(kind, {}).items()
                   if (queue is None or q == queue) and (job_name is None or name == job_name))


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self, bounds: int) -> None:
        self.buckets = [0] * bounds
        self.count = 0
        self.sum = 0.0


class Metrics:
    """Counters and histograms of one app; :meth:`record` is its event subscriber."""

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self._bounds = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, int]] = {kind: {} for kind in EVENT_KINDS}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {name: {} for name in _HISTOGRAMS}

    def __repr__(self) -> str:
        totals = {kind: sum(series.values()) for kind, series in self._counters.items()}
        return f"<Metrics {totals}>"

    def record(self, event: JobEvent) -> None:
        """Count one lifecycle event (called by ``app.events``; never blocks)."""
        labels = (event.queue, event.job_name)
        with self._lock:
            series = self._counters.setdefault(event.kind, {})
            series[labels] = series.get(labels, 0) + 1
            if event.kind == "done" and event.duration is not None:
                self._observe("duration", labels, event.duration)
            elif event.kind == "started" and event.scheduled_at is not None:
                latency = (event.at - event.scheduled_at).total_seconds()
                self._observe("queue_latency", labels, max(0.0, latency))

    def _observe(self, name: str, labels: Labels, value: float) -> None:
        histogram = self._histograms[name].get(labels)
        if histogram is None:
            histogram = self._histograms[name][labels] = _Histogram(len(self._bounds))
        histogram.count += 1
        histogram.sum += value
        for index, bound in enumerate(self._bounds):
            if value <= bound:
                histogram.buckets[index] += 1
                break

    def reset(self) -> None:
        """Forget everything counted so far."""
        with self._lock:
            for series in self._counters.values():
                series.clear()
            for histograms in self._histograms.values():
                histograms.clear()

    def snapshot(self) -> MetricsSnapshot:
        """A frozen copy of every counter and histogram."""
        with self._lock:
            counters = {kind: dict(series) for kind, series in self._counters.items()}
            histograms: dict[str, dict[Labels, HistogramSnapshot]] = {}
            for name, series_map in self._histograms.items():
                histograms[name] = {}
                for labels, h in series_map.items():
                    cumulative, running = [], 0
                    for bound, hits in zip(self._bounds, h.buckets, strict=True):
                        running += hits
                        cumulative.append((bound, running))
                    cumulative.append((math.inf, h.count))
                    histograms[name][labels] = HistogramSnapshot(h.count, h.sum, tuple(cumulative))
        return MetricsSnapshot(counters, histograms)

    def prometheus_text(self) -> str:
        """Every metric in the Prometheus text exposition format 0.0.4 (serve it with
        ``Content-Type: text/plain; version=0.0.4``)."""
        snap = self.snapshot()
        lines: list[str] = []
        for kind in EVENT_KINDS:
            name = f"soniq_jobs_{kind}_total"
            lines.append(f"# HELP {name} {_HELP[kind]}")
            lines.append(f"# TYPE {name} counter")
            for labels, value in sorted(snap.counters.get(kind, {}).items()):
                lines.append(f"{name}{_labels(labels)} {value}")
        for key, (name, help_text) in _HISTOGRAMS.items():
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} histogram")
            for labels, h in sorted(snap.histograms[key].items()):
                for bound, count in h.buckets:
                    le = "+Inf" if math.isinf(bound) else _number(bound)
                    lines.append(f"{name}_bucket{_labels(labels, le=le)} {count}")
                lines.append(f"{name}_sum{_labels(labels)} {_number(h.sum)}")
                lines.append(f"{name}_count{_labels(labels)} {h.count}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, *, le: str | None = None) -> str:
    queue, job_name = labels
    text = f'queue="{_escape(queue)}",job_name="{_escape(job_name)}"'
    if le is not None:
        text += f',le="{le}"'
    return "{" + text + "}"


def _number(value: float) -> str:
    return repr(float(value))
