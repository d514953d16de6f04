"""What the dashboard costs the database and what bad input gets, over real HTTP: no count
reads while nobody watches, bounded job searches, large values cut with a link to the raw JSON,
and a 400 with a message for every out-of-range query value."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from soniq import Soniq
from tests.dashboard.conftest import Dashboard
from tests.helpers import wait_for

memory_only = pytest.mark.parametrize("backend_name", ["memory"], indirect=True)


class Probe:
    """Counts the backend's queue-count reads and the hub's rollups (a tick of its loops)."""

    def __init__(self) -> None:
        self.reads = 0
        self.rollups = 0

    def prepare(self, app: Soniq) -> None:
        backend: Any = app.backend
        queue_stats, store = backend.queue_stats, backend.dashboard
        rollup = store.rollup

        async def counted_stats() -> Any:
            self.reads += 1
            return await queue_stats()

        async def counted_rollup(**kwargs: Any) -> None:
            self.rollups += 1
            await rollup(**kwargs)

        backend.queue_stats = counted_stats
        store._queue_stats = counted_stats  # the store reads counts through this seam
        store.rollup = counted_rollup

    def wait_ticks(self, dashboard: Dashboard, ticks: int) -> None:
        """Let the hub's loops run ``ticks`` more rollups (time passes with the loops live)."""
        target = self.rollups + ticks
        dashboard.call(wait_for, lambda: self.rollups >= target, message="hub rollups")


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` from the test's thread until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _events(http: httpx.Client) -> Any:
    """The ``change`` events of the dashboard's SSE stream, as dicts, with the stream."""
    return http.stream("GET", "/api/events", timeout=10)


def _next_change(lines: Any) -> dict[str, Any]:
    for line in lines:
        if line.startswith("data:"):
            return dict(json.loads(line[5:]))
    raise AssertionError("the event stream ended")


@memory_only
def test_the_live_hub_reads_counts_only_while_someone_listens(
        serve: Callable[..., Dashboard]) -> None:
    probe = Probe()
    dashboard = serve(prepare=probe.prepare, poll_interval=0.05, rollup_interval=0.05)
    probe.wait_ticks(dashboard, 5)
    dashboard.enqueue("tests.ok")  # a notification: still nobody to tell
    probe.wait_ticks(dashboard, 5)
    assert probe.reads == 0
    with dashboard.client() as http:
        with _events(http) as stream:
            lines = stream.iter_lines()
            first = _next_change(lines)
            assert first["queues"][0]["queued"] == 1 and first["estimated"] is False
            assert probe.reads >= 1
            dashboard.enqueue("tests.ok")
            assert _next_change(lines)["queues"][0]["queued"] == 2
        _until(lambda: http.get("/api/health").json()["live_clients"] == 0)
        probe.wait_ticks(dashboard, 3)  # a read in flight when the stream closed has ended
        after = probe.reads
        dashboard.enqueue("tests.ok")
        probe.wait_ticks(dashboard, 5)
        assert probe.reads == after
        # A page load reads the counts once (shared with the feed within poll_interval).
        assert http.get("/api/queues").json()[0]["queued"] == 3
        assert probe.reads == after + 1


@memory_only
def test_job_search_is_bounded_and_says_where_it_stopped(serve: Callable[..., Dashboard]) -> None:
    dashboard = serve(search_scan_limit=3)
    old = dashboard.enqueue("tests.ok", queue="needle")
    for _ in range(6):
        dashboard.enqueue("tests.ok")
    new = dashboard.enqueue("tests.ok", queue="needle")
    with dashboard.client() as http:
        page = http.get("/api/jobs", params={"queue": "needle"}).json()
        assert [j["id"] for j in page["jobs"]] == [new]
        assert page["scan_stopped"] is True and page["scan_limit"] == 3
        found, cursor = [new], page["next_cursor"]
        while cursor is not None:
            page = http.get("/api/jobs", params={"queue": "needle", "before": cursor}).json()
            found += [j["id"] for j in page["jobs"]]
            cursor = page["next_cursor"]
        assert found == [new, old]
        assert page["scan_stopped"] is False
        html = http.get("/jobs", params={"name": "zzzz"}).text
        assert 'data-testid="scan-stopped"' in html and "Search older jobs" in html
        # A page that fills within the scan limit is an ordinary page.
        full = http.get("/api/jobs", params={"limit": 2}).json()
        assert len(full["jobs"]) == 2 and full["scan_stopped"] is False


def test_large_arguments_are_cut_with_a_link_to_the_raw_json(
        serve: Callable[..., Dashboard]) -> None:
    blob = "x" * 300_000
    dashboard = serve()
    big = dashboard.enqueue("tests.fail", message=blob)
    small = dashboard.enqueue("tests.ok", x=21)
    with dashboard.client() as http:
        page = http.get(f"/jobs/{big}")
        assert page.status_code == 200
        assert len(page.content) < 100_000  # 64 KiB of the value, not 300 KB
        assert 'data-testid="job-args-truncated"' in page.text
        assert f'href="/api/jobs/{big}/args"' in page.text
        raw = http.get(f"/api/jobs/{big}/args")
        assert raw.headers["content-type"].startswith("application/json")
        assert raw.json() == {"message": blob}
        detail = http.get(f"/api/jobs/{big}").json()
        assert detail["job"]["args"] is None
        assert detail["shown"]["args"]["truncated"] is True
        assert detail["shown"]["args"]["bytes"] == len(json.dumps({"message": blob}))
        assert len(detail["shown"]["args"]["text"].encode()) <= 64 * 1024
        # A small value is shown in full, pretty-printed, and kept in the API record.
        small_page = http.get(f"/jobs/{small}").text
        assert '&#34;x&#34;: 21' in small_page and "job-args-truncated" not in small_page
        assert http.get(f"/api/jobs/{small}").json()["job"]["args"] == {"x": 21}
        assert http.get(f"/api/jobs/{small}/result").json() is None
        assert http.get("/api/jobs/0190a0a0-0000-7000-8000-00000000000a/args").status_code == 404


@memory_only
@pytest.mark.parametrize(("path", "words"), [
    ("/jobs?since=0001-01-01T00:00:00%2B14:00", "out of range"),
    ("/api/jobs?since=0001-01-01T00:00:00%2B14:00", "out of range"),
    ("/api/jobs?until=9999-12-31T23:59:59-14:00", "out of range"),
    ("/api/jobs?since=999999d", "out of range"),
    ("/api/dead-letter?offset=1e20", "offset"),
    ("/api/dead-letter?offset=100000000000000000000", "offset must be from 0 to"),
    ("/api/dead-letter?offset=-1", "offset must be from 0 to"),
    ("/dead-letter?offset=100000000", "offset must be from 0 to"),
    ("/api/audit?limit=-5", "limit must be from 1 to"),
    ("/api/audit?limit=0", "limit must be from 1 to"),
    ("/api/jobs?limit=100000", "limit must be from 1 to"),
])
def test_out_of_range_query_values_are_a_400_with_a_message(
        dashboard: Dashboard, path: str, words: str) -> None:
    with dashboard.client() as http:
        response = http.get(path)
    assert response.status_code == 400, response.text
    assert words in response.text
