"""Stored XSS: job names, queues, arguments, errors, logs and worker facts carrying script payloads
render inert on every page (escaped text, never markup), on every backend."""

from __future__ import annotations

import json

from soniq.ids import new_id
from soniq.types import NewJob, WorkerInfo
from tests.dashboard.conftest import Dashboard

SCRIPT = '<script>window.__xss = 1</script>'
IMG = '"><img src=x onerror="window.__xss=1">'
PAYLOADS = (SCRIPT, IMG)
RAW_MARKERS = ("<script>window.__xss", "<img src=x", 'onerror="window')


def plant_payloads(dashboard: Dashboard) -> dict[str, str]:
    """Jobs and a worker whose every shown field carries a payload; returns some ids."""
    app = dashboard.app

    @app.job(name="tests.xss", retries=0)
    def xss(text: str) -> None:
        import logging

        logging.getLogger("tests.xss").warning("log %s %s", SCRIPT, IMG)
        raise ValueError(f"error {SCRIPT} {IMG}")

    failed = dashboard.enqueue("tests.xss", text=f"arg {SCRIPT} {IMG}")
    # Names and queues are validated at enqueue; write a row directly as a hostile or older
    # writer could, with a payload in every column the pages show.
    odd = NewJob(id=new_id(), job_name=f"name{SCRIPT}", queue=f"queue{IMG}", priority=100,
                 args=json.dumps({"k": SCRIPT, IMG: [IMG]}), max_attempts=1)
    dashboard.call(app.backend.insert_jobs, [odd])
    dashboard.run_jobs()
    # No worker registers the odd name: the cleanup dead-letters it (here without the grace).
    dashboard.call(app.backend.dead_letter_unknown, [spec.name for spec in app.registry], grace=0)
    dashboard.call(app.logs.flush)
    dashboard.call(app.backend.register_worker, WorkerInfo(
        id=new_id(), hostname=f"host{SCRIPT}", pid=1, queues=(f"q{IMG}",), concurrency=1))
    return {"failed": failed, "odd": odd.id}


def test_payloads_render_inert_everywhere(dashboard: Dashboard) -> None:
    ids = plant_payloads(dashboard)
    with dashboard.client() as http:
        detail = http.get(f"/api/jobs/{ids['failed']}").json()
        assert SCRIPT in detail["job"]["errors"][0]["message"]  # the payload really is stored
        assert any(SCRIPT in log["message"] for log in detail["logs"])
        pages = ["/", "/jobs", "/jobs?status=dead_letter", f"/jobs/{ids['failed']}",
                 f"/jobs/{ids['odd']}", "/dead-letter", "/workers", "/schedules", "/webhooks",
                 "/health", f"/jobs?name={SCRIPT}", f"/dead-letter?name={IMG}"]
        for path in pages:
            response = http.get(path)
            assert response.status_code in (200, 400), (path, response.status_code)
            html = response.text
            for marker in RAW_MARKERS:
                assert marker not in html, (path, marker)
        job_page = http.get(f"/jobs/{ids['failed']}").text
        assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in job_page  # shown, as text
        assert "&#34;&gt;&lt;img src=x" in job_page
        assert "host&lt;script&gt;" in http.get("/workers").text
        assert "name&lt;script&gt;" in http.get("/jobs").text
        # The API answers JSON, never HTML, whatever the data.
        for path in ("/api/jobs", f"/api/jobs/{ids['odd']}", "/api/dead-letter", "/api/workers"):
            assert http.get(path).headers["content-type"] == "application/json"
