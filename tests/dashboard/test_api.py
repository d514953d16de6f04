"""The dashboard's JSON API and pages over real HTTP, on every backend: each route, pagination and
filter edge cases, the writes and their audit entries, live events, OpenAPI, sub-path serving."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.dashboard.conftest import Dashboard

PAGES = ["/", "/jobs", "/dead-letter", "/workers", "/schedules", "/webhooks", "/health"]


def _seed(dashboard: Dashboard) -> dict[str, list[str]]:
    ok = [dashboard.enqueue("tests.ok", x=i) for i in range(5)]
    failed = [dashboard.enqueue("tests.fail", message=f"boom {i}") for i in range(3)]
    dashboard.run_jobs()
    queued = [dashboard.enqueue("tests.ok", x=99, queue="later")]
    return {"ok": ok, "failed": failed, "queued": queued}


def test_every_read_route_answers(dashboard: Dashboard) -> None:
    ids = _seed(dashboard)
    with dashboard.client() as http:
        for path in PAGES + [f"/jobs/{ids['ok'][0]}", f"/jobs/{ids['failed'][0]}"]:
            response = http.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"].startswith("text/html")
        overview = http.get("/api/overview").json()
        assert overview["totals"]["done"] == 5
        assert overview["totals"]["dead_letter"] == 3
        assert overview["totals"]["queued"] == 1
        assert {q["queue"] for q in overview["queues"]} == {"default", "critical", "later"}
        assert len(overview["charts"]["hour"]) == 60
        assert len(overview["charts"]["day"]) == 24
        assert [q["queue"] for q in http.get("/api/queues").json()] == ["critical", "default",
                                                                          "later"]
        detail = http.get(f"/api/jobs/{ids['failed'][0]}").json()
        assert detail["job"]["status"] == "dead_letter"
        assert detail["job"]["errors"][0]["type"] == "ValueError"
        assert "Traceback" in detail["job"]["errors"][0]["traceback"]
        assert detail["timings"]["ran"] is not None
        assert http.get(f"/api/jobs/{ids['ok'][0]}").json()["job"]["result"] == {"doubled": 0}
        dead = http.get("/api/dead-letter").json()
        assert dead["count"] == 3 and len(dead["jobs"]) == 3
        assert http.get("/api/workers").json() == []
        assert http.get("/api/schedules").json() == []
        assert http.get("/api/webhooks").json() == {"endpoints": [], "deliveries": []}
        health = http.get("/api/health").json()
        assert health["status"] == "ok"
        assert health["backend"] == dashboard.app.backend.name
        if dashboard.app.backend.name != "memory":
            assert health["schema_version"] >= 5
            assert health["jobs_table_bytes"] > 0
        assert http.get("/api/audit").json() == []
        schema = http.get("/api/schema/openapi.json").json()
        assert "/api/jobs" in schema["paths"]
        assert "/api/dead-letter/replay" in schema["paths"]
        assert "/jobs" not in schema["paths"]  # pages are not part of the API
        assert http.get("/static/soniq.css").status_code == 200
        assert http.get("/static/soniq.js").status_code == 200


def test_job_logs_show_on_the_job(dashboard: Dashboard) -> None:
    @dashboard.app.job(name="tests.logging")
    def logging_job() -> None:
        import logging

        logging.getLogger("tests.jobs").warning("hello from the job")

    job_id = dashboard.enqueue("tests.logging")
    dashboard.run_jobs()
    dashboard.call(dashboard.app.logs.flush)  # workers write their buffered records every second
    with dashboard.client() as http:
        logs = http.get(f"/api/jobs/{job_id}").json()["logs"]
        assert [log["message"] for log in logs] == ["hello from the job"]
        assert "hello from the job" in http.get(f"/jobs/{job_id}").text


def test_job_filters_and_cursor_pagination(dashboard: Dashboard) -> None:
    ids = _seed(dashboard)
    with dashboard.client() as http:
        def jobs(**params: object) -> dict[str, object]:
            response = http.get("/api/jobs", params=params)
            assert response.status_code == 200, response.text
            return response.json()  # type: ignore[no-any-return]

        everything = jobs()
        assert len(everything["jobs"]) == 9 and everything["next_cursor"] is None
        all_ids = [j["id"] for j in everything["jobs"]]
        assert all_ids == sorted(all_ids, reverse=True)  # newest first
        assert {j["id"] for j in jobs(status="dead_letter")["jobs"]} == set(ids["failed"])
        assert {j["id"] for j in jobs(queue="later")["jobs"]} == set(ids["queued"])
        assert len(jobs(name="FAIL")["jobs"]) == 3  # contains, case-insensitive
        assert jobs(name="%")["jobs"] == []  # LIKE wildcards are literal
        assert jobs(name="_")["jobs"] == []
        assert len(jobs(queue="default", status="done", name="ok")["jobs"]) == 5
        assert jobs(since="2999-01-01T00:00:00Z")["jobs"] == []
        assert len(jobs(since="1h")["jobs"]) == 9
        assert len(jobs(until="2000-01-01")["jobs"]) == 0
        past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        assert len(jobs(since=past, until="2999-01-01")["jobs"]) == 9

        # Walk the pages: each id once, in order, the last page has no cursor.
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = jobs(limit=2, **({"before": cursor} if cursor else {}))
            seen += [j["id"] for j in page["jobs"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == all_ids and pages == 5
        exact = jobs(limit=9)
        assert len(exact["jobs"]) == 9 and exact["next_cursor"] is None
        # The cursor of the last row gives an empty page, never an error.
        assert jobs(before=all_ids[-1])["jobs"] == []

        # The HTML list links to the next page with the filters kept (a shareable URL).
        html = http.get("/jobs", params={"status": "done", "limit": 2}).text
        assert "status=done" in html and "before=" in html and "limit=2" in html

        for bad in ({"status": "finished"}, {"queue": "no spaces"}, {"limit": 0},
                    {"limit": 201}, {"before": "not-an-id"}, {"since": "yesterday"},
                    {"limit": "many"}, {"name": "x" * 129}):
            response = http.get("/api/jobs", params=bad)
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["detail"]
            page = http.get("/jobs", params=bad)
            assert page.status_code == 400 and "Error 400" in page.text
        assert http.get("/api/jobs/not-a-uuid").status_code == 404
        assert http.get("/api/jobs/0190a0a0-0000-7000-8000-000000000000").status_code == 404
        assert http.get("/jobs/0190a0a0-0000-7000-8000-000000000000").status_code == 404
        assert http.get("/api/nothing-here").json()["status_code"] == 404

        dead = http.get("/api/dead-letter", params={"limit": 2, "offset": 2}).json()
        assert dead["count"] == 3 and len(dead["jobs"]) == 1
        assert http.get("/api/dead-letter", params={"queue": "default"}).json()["count"] == 0
        assert http.get("/api/dead-letter", params={"offset": -1}).status_code == 400


def test_writes_change_jobs_and_are_audited(dashboard: Dashboard) -> None:
    ids = _seed(dashboard)
    later = ids["queued"][0]
    with dashboard.client() as http:
        assert http.post(f"/api/jobs/{later}/cancel").json() == {"cancelled": True,
                                                                  "cancel_requested": False}
        assert http.post(f"/api/jobs/{later}/cancel").json() == {"cancelled": False,
                                                                  "cancel_requested": False}
        assert http.post(f"/api/jobs/{ids['failed'][0]}/retry").json() == {"retried": True}
        assert http.post(f"/api/jobs/{ids['ok'][0]}/retry").json() == {"retried": False}
        assert http.delete(f"/api/jobs/{ids['ok'][1]}").json() == {"deleted": True}
        assert http.get(f"/api/jobs/{ids['ok'][1]}").status_code == 404
        assert http.post(f"/api/dead-letter/{ids['failed'][1]}/replay").json() == {"replayed": 1}
        assert http.delete(f"/api/dead-letter/{ids['failed'][2]}").json() == {"deleted": 1}
        assert http.delete(f"/api/dead-letter/{ids['failed'][2]}").json() == {"deleted": 0}
        statuses = {j["id"]: j["status"] for j in http.get("/api/jobs").json()["jobs"]}
        assert statuses[later] == "cancelled"
        assert statuses[ids["failed"][0]] == statuses[ids["failed"][1]] == "queued"
        assert ids["failed"][2] not in statuses

        audit = http.get("/api/audit").json()
        assert [(e["action"], e["outcome"]) for e in reversed(audit)] == [
            ("job.cancel", "ok"), ("job.cancel", "not_applied"), ("job.retry", "ok"),
            ("job.retry", "not_applied"), ("job.delete", "ok"), ("dead_letter.replay", "ok"),
            ("dead_letter.delete", "ok"), ("dead_letter.delete", "not_applied"),
        ]
        assert all(e["actor"] == "loopback" and e["client"] == "127.0.0.1" for e in audit)
        assert audit[-1]["targets"] == [later]
        assert "job.cancel" in http.get("/health").text


def test_bulk_dead_letter_actions(dashboard: Dashboard) -> None:
    failed = [dashboard.enqueue("tests.fail", message=f"m{i}") for i in range(6)]
    dashboard.enqueue("tests.fail", queue="other")
    dashboard.run_jobs()
    with dashboard.client() as http:
        body = {"ids": failed[:2] + ["0190a0a0-0000-7000-8000-000000000000"]}
        assert http.post("/api/dead-letter/replay", json=body).json()["replayed"] == 2
        assert http.post("/api/dead-letter/delete", json={"ids": failed[2:4]}).json() == {
            "deleted": 2, "ids": failed[2:4]}
        for bad in ({"ids": []}, {"ids": ["nope"]}, {"ids": [failed[4]] * 201}, {"idz": 1}):
            assert http.post("/api/dead-letter/replay", json=bad).status_code == 400, bad
        assert http.post("/api/dead-letter/replay-matching",
                         json={"queue": "other"}).json() == {"replayed": 1}
        assert http.get("/api/dead-letter").json()["count"] == 2
        assert http.post("/api/dead-letter/replay-matching", json={}).json() == {"replayed": 2}
        assert http.get("/api/dead-letter").json()["count"] == 0
        actions = [e["action"] for e in http.get("/api/audit").json()]
        assert actions.count("dead_letter.replay_bulk") == 1
        assert actions.count("dead_letter.replay_matching") == 2
        assert actions.count("dead_letter.delete_bulk") == 1


def test_schedules_pause_resume_and_run_now(dashboard: Dashboard) -> None:
    dashboard.call(dashboard.app.scheduler.add, "nightly", cron="0 3 * * *", target="tests.ok",
                   args={"x": 7})
    with dashboard.client() as http:
        [schedule] = http.get("/api/schedules").json()
        assert schedule["name"] == "nightly" and schedule["paused"] is False
        assert schedule["next_run_at"] is not None
        assert http.post("/api/schedules/nightly/pause").json() == {"name": "nightly",
                                                                     "paused": True}
        assert http.get("/api/schedules").json()[0]["paused"] is True
        assert "Resume" in http.get("/schedules").text
        assert http.post("/api/schedules/nightly/resume").json()["paused"] is False
        run = http.post("/api/schedules/nightly/run").json()
        job = http.get(f"/api/jobs/{run['job_id']}").json()["job"]
        assert job["job_name"] == "tests.ok" and job["args"] == {"x": 7}
        for action in ("pause", "resume", "run"):
            assert http.post(f"/api/schedules/missing/{action}").status_code == 404
        outcomes = [(e["action"], e["outcome"]) for e in http.get("/api/audit").json()]
        assert ("schedule.run", "ok") in outcomes
        assert ("schedule.pause", "not_applied") in outcomes


def test_workers_show_heartbeat_and_current_jobs(dashboard: Dashboard) -> None:
    gate = dashboard.call(_make_gate)

    @dashboard.app.job(name="tests.block")
    async def block() -> None:
        await gate.wait()

    job_id = dashboard.enqueue("tests.block")
    worker = dashboard.app.worker(concurrency=2)
    dashboard.portal.start_task_soon(worker.run)
    with dashboard.client() as http:
        _until(lambda: any(w["current_jobs"] for w in http.get("/api/workers").json()))
        [row] = http.get("/api/workers").json()
        assert row["alive"] is True and row["id"] == worker.id
        assert row["current_jobs"][0]["id"] == job_id
        assert row["last_heartbeat"]
        assert "tests.block" in http.get("/workers").text
        assert http.get("/api/overview").json()["workers_alive"] == 1
        dashboard.portal.call(gate.set)
        worker.stop()
        _until(lambda: http.get("/api/workers").json() == [])


def test_job_names_count_live_workers_and_flag_the_unknown(dashboard: Dashboard) -> None:
    with dashboard.client() as http:
        assert http.get("/api/job-names").json() == []
        assert "No job definitions stored yet." in http.get("/workers").text
        worker = dashboard.app.worker()
        dashboard.portal.start_task_soon(worker.run)
        _until(lambda: http.get("/api/job-names").json() != [])
        expected = [("tests.fail", "critical"), ("tests.flaky", "default"), ("tests.ok", "default")]
        assert [(j["name"], j["queue"], j["live_workers"], j["flagged"])
                for j in http.get("/api/job-names").json()] == [
            (name, queue, 1, False) for name, queue in expected]
        assert 'data-testid="flagged"' not in http.get("/workers").text
        worker.stop()  # its row goes: nobody runs these jobs now
        _until(lambda: all(j["flagged"] for j in http.get("/api/job-names").json()))
        assert [(j["name"], j["live_workers"]) for j in http.get("/api/job-names").json()] == [
            (name, 0) for name, _ in expected]
        page = http.get("/workers").text
        assert page.count('data-testid="flagged"') == 3 and "tests.flaky" in page


async def _make_gate() -> object:
    import anyio

    return anyio.Event()


def _until(predicate: object, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_webhooks_and_deliveries(dashboard: Dashboard) -> None:
    endpoint = dashboard.call(dashboard.app.webhooks.register, "https://hooks.example.com/soniq",
                              secret="s" * 32)
    with dashboard.client() as http:
        data = http.get("/api/webhooks").json()
        assert [e["id"] for e in data["endpoints"]] == [endpoint["id"]]
        assert "secret" not in json.dumps(data["endpoints"])
        assert "s" * 32 not in http.get("/webhooks").text
        assert "hooks.example.com" in http.get("/webhooks").text
        assert http.get("/api/webhooks", params={"status": "weird"}).status_code == 400


def test_charts_read_rollups(dashboard: Dashboard) -> None:
    _seed(dashboard)
    with dashboard.client() as http:
        def rolled() -> bool:
            hour = http.get("/api/overview").json()["charts"]["hour"]
            return sum(b["done"] for b in hour) == 5 and sum(b["failed"] for b in hour) == 3

        _until(rolled)
        assert "5 done" in http.get("/").text


def test_live_events_stream_counts_when_they_change(dashboard: Dashboard) -> None:
    with dashboard.client() as http, http.stream("GET", "/api/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _events(stream.iter_lines())
        first = next(events)
        assert first["queues"] == []
        dashboard.enqueue("tests.ok", x=1)
        changed = next(events)
        assert changed["queues"][0]["queued"] == 1
        assert changed["version"] > first["version"]
        assert http.get("/api/health").json()["live_clients"] == 1


def _events(lines: object) -> object:
    event = None
    for line in lines:  # type: ignore[attr-defined]
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "change":
            yield json.loads(line.split(":", 1)[1])


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_served_under_a_root_path(serve: object) -> None:
    dashboard = serve(root_path="/ops/soniq")  # type: ignore[operator]
    # uvicorn --root-path: the proxy strips the prefix; links carry it.
    base = dashboard.url.removesuffix("/ops/soniq")
    with httpx.Client(base_url=base) as http:
        html = http.get("/jobs").text
        assert 'href="/ops/soniq/static/soniq.css"' in html
        assert 'data-root="/ops/soniq"' in html
        assert http.get("/api/health").json()["status"] == "ok"


@pytest.mark.parametrize("backend_name", ["memory"], indirect=True)
def test_mounted_in_a_users_litestar_app(backend_name: str) -> None:
    from litestar import Litestar, asgi, get
    from litestar.testing import TestClient

    from soniq import Soniq
    from soniq.dashboard import create_dashboard_app

    soniq = Soniq(backend="memory")
    dashboard = create_dashboard_app(soniq, root_path="/jobs-ui", api_key="",
                                     allowed_hosts=["testserver.local"])

    @asgi("/jobs-ui", is_mount=True, copy_scope=True)
    async def mounted(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        await dashboard(scope, receive, send)  # type: ignore[arg-type]

    @get("/")
    async def home() -> str:
        return "user app"

    # A mounted app gets no lifespan events of its own: the user's app runs the dashboard's.
    user_app = Litestar([home, mounted], lifespan=[lambda _app: dashboard.lifespan()])
    with TestClient(user_app) as client:
        assert client.get("/").text == "user app"
        page = client.get("/jobs-ui/jobs")
        assert page.status_code == 200
        assert 'href="/jobs-ui/static/soniq.css"' in page.text
        assert client.get("/jobs-ui/api/queues").json() == []
        assert client.get("/jobs-ui/api/health").json()["listen"] != "starting"  # hub ran
