"""The dashboard's Queues page and queue API over a real HTTP server, on every backend: list,
pause and resume (with the write rules of every dashboard write), and the audit view read from
the database, so a pause made by the CLI in another process shows there."""

from __future__ import annotations

import html
from collections.abc import Callable

from tests.cli.cli import clean_env, ok
from tests.dashboard.conftest import Dashboard

KEY = "queue-test-key"


def test_queues_page_and_api_pause_and_resume(dashboard: Dashboard) -> None:
    job_id = dashboard.enqueue("tests.ok", x=1)
    with dashboard.client() as http:
        [row] = http.get("/api/queue-settings").json()
        assert (row["name"], row["paused"], row["queued"], row["concurrency_limit"]) == (
            "default", False, 1, None)
        page = http.get("/queues").text
        assert 'href="/queues" aria-current="page"' in page
        assert 'data-url="/api/queues/default/pause"' in page

        assert http.post("/api/queues/default/pause").json() == {
            "name": "default", "paused": True, "changed": True}
        assert http.post("/api/queues/default/pause").json()["changed"] is False
        assert http.post("/api/queues/empty/pause").json()["changed"] is True  # no jobs yet
        assert [(q["name"], q["paused"]) for q in http.get("/api/queue-settings").json()] == [
            ("default", True), ("empty", True)]
        page = http.get("/queues").text
        assert 'data-url="/api/queues/default/resume"' in page and "paused" in page

        assert dashboard.run_jobs() == 0  # nothing is claimed from a paused queue
        refused = http.post("/api/queues/no%20spaces/pause")
        assert refused.status_code == 400 and "invalid queue name" in refused.json()["detail"]
        assert http.post("/api/queues/default/resume").json()["changed"] is True
        assert dashboard.run_jobs() == 1
        assert http.get(f"/api/jobs/{job_id}").json()["job"]["status"] == "done"

        audit = http.get("/api/audit").json()
        assert [(e["action"], e["targets"], e["outcome"]) for e in reversed(audit)] == [
            ("queue.pause", ["default"], "ok"), ("queue.pause", ["default"], "not_applied"),
            ("queue.pause", ["empty"], "ok"), ("queue.resume", ["default"], "ok")]
        assert all(e["actor"] == "loopback" and e["client"] == "127.0.0.1" for e in audit)
        assert "queue.resume" in http.get("/queues").text


def test_queue_writes_follow_the_write_rules(serve: Callable[..., Dashboard]) -> None:
    dashboard = serve(api_key=KEY)
    with dashboard.client() as http:
        assert http.post("/api/queues/mail/pause",
                         headers={"X-Soniq-Key": "wrong"}).status_code == 401
        assert http.post("/api/queues/mail/pause",
                         headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert http.get("/api/queue-settings").json() == []  # nothing was written
        assert http.post("/api/queues/mail/pause", headers={"X-Soniq-Key": KEY}).json()[
            "changed"] is True
        audit = http.get("/api/audit").json()
        assert [(e["actor"], e["action"], e["outcome"]) for e in reversed(audit)] == [
            ("anonymous", "queue.pause", "denied"), ("anonymous", "queue.pause", "denied"),
            ("api-key", "queue.pause", "ok")]
        assert audit[-1]["targets"] == ["mail"]


def test_a_pause_made_by_the_cli_shows_in_the_audit_view(dashboard: Dashboard,
                                                        database_url: str | None) -> None:
    if database_url is None:
        return  # memory: no other process can reach it (the API test covers the view)
    ok("queues", "pause", "nightly", env=clean_env(SONIQ_DATABASE_URL=database_url))
    with dashboard.client() as http:
        [entry] = http.get("/api/audit").json()
        assert (entry["action"], entry["targets"], entry["outcome"]) == (
            "queue.pause", ["nightly"], "ok")
        assert entry["actor"].startswith("cli:")
        assert html.escape(entry["actor"]) in http.get("/health").text
        assert [(q["name"], q["paused"]) for q in http.get("/api/queue-settings").json()] == [
            ("nightly", True)]
