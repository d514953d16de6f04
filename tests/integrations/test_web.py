"""The FastAPI and Litestar examples, served for real: an HTTP request enqueues a job that the
worker running inside the web app then runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from soniq import Soniq
from soniq.contrib.litestar import SoniqPlugin
from soniq.testing import wait_for_status

from ._server import poll, uvicorn

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def example_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "example.db")


def finished(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body if body["status"] == "done" else None


def test_fastapi_example_runs_the_job_a_request_enqueued(example_db: str, tmp_path: Path) -> None:
    with uvicorn("fastapi_app:api", env={"SONIQ_DATABASE_URL": example_db}, cwd=tmp_path) as client:
        response = client.post("/signup", params={"email": "ada@example.com"})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        job = poll(lambda: finished(client, job_id), what="the signup job to finish")
        assert job["result"] == "welcome sent to ada@example.com"
        assert job["attempts"] == 1
        assert client.get("/jobs/0190c2a4-0000-7000-8000-000000000000").status_code == 404


def test_litestar_example_runs_the_job_a_request_enqueued(example_db: str, tmp_path: Path) -> None:
    with uvicorn("litestar_app:api", env={"SONIQ_DATABASE_URL": example_db}, cwd=tmp_path) as client:
        response = client.post("/orders/42")
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        job = poll(lambda: finished(client, job_id), what="the order job to finish")
        assert job["result"] == {"order_id": 42, "shipped": True}
        assert client.get("/jobs/0190c2a4-0000-7000-8000-000000000000").status_code == 404
        # The plugin mounted the dashboard under /dashboard; it shows the same storage.
        dashboard = client.get("/dashboard/")
        assert dashboard.status_code == 200, dashboard.text
        assert "orders" in client.get("/dashboard/api/queues").text


# -- the helpers in-process, on asyncio and trio ------------------------------------------------------
@pytest.mark.anyio
async def test_fastapi_lifespan_helper_on_any_event_loop(tmp_path: Path) -> None:
    from soniq.contrib.fastapi import get_soniq, lifespan

    jobs = Soniq(database_url=str(tmp_path / "jobs.db"), poll_interval=0.05)

    @jobs.job(name="ping")
    async def ping() -> str:
        return "pong"

    class Request:  # what get_soniq reads: request.state.<key>
        def __init__(self, state: dict[str, Any]) -> None:
            self.state = type("State", (), state)()

    async with lifespan(jobs, worker=True)(object()) as state:
        soniq = get_soniq(Request(state))
        assert soniq is jobs and jobs.is_initialized
        job_id = await soniq.enqueue(ping)
        assert (await wait_for_status(jobs, job_id, "done"))["result"] == "pong"
    assert jobs.is_closed
    with pytest.raises(RuntimeError, match="lifespan"):
        get_soniq(Request({}))


@pytest.mark.anyio
async def test_litestar_plugin_injects_and_runs_a_worker_on_any_event_loop(tmp_path: Path) -> None:
    jobs = Soniq(database_url=str(tmp_path / "jobs.db"), poll_interval=0.05)

    @jobs.job(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @post("/add/{a:int}/{b:int}")
    async def enqueue_add(a: FromPath[int], b: FromPath[int], queue_app: NamedDependency[Soniq]) -> str:
        return await queue_app.enqueue(add, a=a, b=b)

    plugin = SoniqPlugin(jobs, dependency_key="queue_app", run_worker=True, worker_concurrency=2)
    api = Litestar([enqueue_add], plugins=[plugin])
    transport = httpx.ASGITransport(app=api)
    async with api.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        job_id = (await client.post("/add/2/3")).text
        assert (await wait_for_status(jobs, job_id, "done"))["result"] == 5
    assert jobs.is_closed
    with pytest.raises(ValueError, match="must start with '/'"):
        SoniqPlugin(jobs, dashboard_path="dashboard")


pytestmark = pytest.mark.skipif(importlib.util.find_spec("fastapi") is None,
                                reason="fastapi is not installed (pip install soniq[test])")
