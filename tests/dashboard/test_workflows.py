"""The dashboard's Workflows pages and workflow API over a real HTTP server, on every backend:
the list, a diamond's graph (a node per step with its status, an edge per dependency), the JSON
endpoints, cancel under the write rules, hostile names rendered inert, 404s, and a batch larger
than the drawing cap."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from soniq.ids import new_id
from soniq.types import NewJob
from tests.dashboard.conftest import Dashboard
from tests.dashboard.test_xss import RAW_MARKERS, SCRIPT

KEY = "workflow-test-key"


def diamond(dashboard: Dashboard, name: str = "nightly-report") -> str:
    """a -> (b, c) -> d, every step ``tests.ok``; the workflow id."""
    wf = dashboard.app.workflow(name)
    a = wf.add("tests.ok", name="a", args={"x": 1})
    b = wf.add("tests.ok", name="b", after=[a])
    c = wf.add("tests.ok", name="c", after=[a])
    wf.add("tests.ok", name="d", after=[b, c])
    return str(dashboard.call(wf.enqueue))


def nodes(page: str) -> dict[str, str]:
    """Step name -> status of every node the graph draws."""
    found = re.findall(r'<a class="node node-(\w+)" href="[^"]*" data-step="([^"]*)" '
                       r'data-status="(\w+)"', page)
    assert all(cls == status for cls, _, status in found)
    return {step: status for _, step, status in found}


def edges(page: str) -> set[tuple[str, str]]:
    return set(re.findall(r'<path class="edge" d="[^"]*" marker-end="url\(#arrow\)" '
                          r'data-from="([^"]*)" data-to="([^"]*)"', page))


def test_list_and_detail_draw_a_diamond(dashboard: Dashboard) -> None:
    workflow_id = diamond(dashboard)
    with dashboard.client() as http:
        listing = http.get("/workflows").text
        assert 'href="/workflows" aria-current="page"' in listing
        assert f'href="/workflows/{workflow_id}"' in listing and "nightly-report" in listing
        assert 'href="/workflows"' in http.get("/").text  # in every page's navigation

        page = http.get(f"/workflows/{workflow_id}").text
        assert nodes(page) == {"a": "queued", "b": "waiting", "c": "waiting", "d": "waiting"}
        assert edges(page) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
        assert f'data-url="/api/workflows/{workflow_id}/cancel"' in page
        # Columns by depth: a, then b and c stacked, then d.
        xs = dict(re.findall(r'data-step="(\w)"[^>]*>\s*<title>[^<]*</title>\s*<rect x="(\d+)"',
                             page))
        assert int(xs["a"]) < int(xs["b"]) == int(xs["c"]) < int(xs["d"])

        assert dashboard.run_jobs() == 4
        page = http.get(f"/workflows/{workflow_id}").text
        assert nodes(page) == dict.fromkeys("abcd", "done")
        assert 'data-testid="cancel-workflow"' not in page  # nothing left to cancel

        listed = http.get("/api/workflows").json()
        [row] = listed["workflows"]
        assert (row["id"], row["name"], row["kind"], row["status"], row["total"]) == (
            workflow_id, "nightly-report", "workflow", "done", 4)
        assert row["counts"]["done"] == 4 and listed["next_cursor"] is None
        detail = http.get(f"/api/workflows/{workflow_id}").json()
        assert detail["workflow"]["status"] == "done" and detail["truncated"] is False
        assert {s["name"]: sorted(s["depends_on"]) for s in detail["workflow"]["steps"]} == {
            "a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
        assert http.get("/api/workflows?status=running").json()["workflows"] == []
        assert http.get("/api/workflows?status=bogus").status_code == 400


def test_the_list_pages_newest_first(dashboard: Dashboard) -> None:
    ids = [diamond(dashboard, f"wf-{i}") for i in range(3)]
    with dashboard.client() as http:
        first = http.get("/api/workflows?limit=2").json()
        assert [w["id"] for w in first["workflows"]] == ids[:0:-1]
        rest = http.get(f"/api/workflows?limit=2&before={first['next_cursor']}").json()
        assert [w["id"] for w in rest["workflows"]] == ids[:1] and rest["next_cursor"] is None
        assert f"before={first['next_cursor']}" in http.get("/workflows?limit=2").text


def test_cancel_follows_the_write_rules(serve: Callable[..., Dashboard]) -> None:
    dashboard = serve(api_key=KEY)
    workflow_id = diamond(dashboard)
    url = f"/api/workflows/{workflow_id}/cancel"
    with dashboard.client() as http:
        assert http.post(url, headers={"X-Soniq-Key": "wrong"}).status_code == 401
        assert http.post(url, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert http.get(f"/api/workflows/{workflow_id}").json()["workflow"]["status"] == "running"
        done = http.post(url, headers={"X-Soniq-Key": KEY})
        assert done.status_code == 200
        assert done.json() == {"id": workflow_id, "steps": dict.fromkeys("dcba", "cancelled")}
        assert nodes(http.get(f"/workflows/{workflow_id}").text) == dict.fromkeys(
            "abcd", "cancelled")
        audit = http.get("/api/audit").json()
        assert [(e["actor"], e["action"], e["outcome"]) for e in reversed(audit)] == [
            ("anonymous", "workflow.cancel", "denied"), ("anonymous", "workflow.cancel", "denied"),
            ("api-key", "workflow.cancel", "ok")]


def test_unknown_workflows_are_404(dashboard: Dashboard) -> None:
    with dashboard.client() as http:
        for path in (f"/api/workflows/{new_id()}", "/api/workflows/not-an-id",
                     f"/workflows/{new_id()}", "/workflows/not-an-id"):
            assert http.get(path).status_code == 404, path
        assert http.post(f"/api/workflows/{new_id()}/cancel").status_code == 404
        assert http.get("/api/workflows?before=nope").status_code == 400


def test_hostile_names_render_inert(dashboard: Dashboard) -> None:
    app = dashboard.app
    named = dashboard.app.workflow(f"wf{SCRIPT}")
    named.add("tests.ok")
    first = str(dashboard.call(named.enqueue))
    # Step names are validated by the builder; write one directly as a hostile writer could.
    hostile = new_id()
    step = NewJob(id=new_id(), job_name=f"job{SCRIPT}", queue="default", priority=100,
                  args="{}", max_attempts=1, workflow_id=hostile, step_name=f"step{SCRIPT}")
    dashboard.call(partial(app.backend.insert_workflow, hostile, f"name{SCRIPT}", "workflow",
                           [step]))
    with dashboard.client() as http:
        for path in ("/workflows", f"/workflows/{first}", f"/workflows/{hostile}"):
            html = http.get(path).text
            for marker in RAW_MARKERS:
                assert marker not in html, (path, marker)
        page = http.get(f"/workflows/{hostile}").text
        assert "step&lt;script&gt;" in page and "name&lt;script&gt;" in page
        assert http.get(f"/api/workflows/{hostile}").json()["workflow"]["steps"][0][
            "name"] == f"step{SCRIPT}"


def test_a_large_batch_draws_only_the_cap(dashboard: Dashboard) -> None:
    batch = str(dashboard.call(partial(dashboard.app.enqueue_batch, "tests.ok",
                                       [{"x": i} for i in range(600)], on_complete="tests.ok")))
    with dashboard.client() as http:
        page = http.get(f"/workflows/{batch}").text
        drawn = nodes(page)
        assert len(drawn) == 500 and set(drawn.values()) == {"queued"}
        assert "Drawing the first 500 of 601 steps" in page
        assert edges(page) == set()  # the callback (the 601st step) is not drawn
        detail = http.get(f"/api/workflows/{batch}").json()
        assert (detail["steps_total"], detail["steps_shown"], detail["truncated"]) == (
            601, 500, True)
        assert detail["workflow"]["kind"] == "batch"
