"""The Django example end to end: a view enqueues a ``@task`` on transaction commit, ``soniq worker
soniq.contrib.django:app`` runs it, and the view reads the result back through the Tasks API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from soniq import Soniq

from ._server import EXAMPLES, free_port, http_server, poll, process

pytest.importorskip("django")
PROJECT = EXAMPLES / "django_project"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def soniq_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "soniq.db")


def finished(client: httpx.Client, task_id: str) -> dict[str, Any] | None:
    response = client.get(f"/tasks/{task_id}/")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body if body["status"] in ("SUCCESSFUL", "FAILED") else None


def test_django_task_runs_end_to_end(soniq_db: str, tmp_path: Path) -> None:
    env = {"DJANGO_SETTINGS_MODULE": "mysite.settings", "PYTHONPATH": str(PROJECT),
           "DJANGO_DATABASE_PATH": str(tmp_path / "django.sqlite3"),
           "SONIQ_DATABASE_URL": soniq_db}
    migrate = subprocess.run([sys.executable, str(PROJECT / "manage.py"), "migrate"], cwd=tmp_path,
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    server = [sys.executable, str(PROJECT / "manage.py"), "runserver", f"127.0.0.1:{port}",
              "--noreload", "--skip-checks"]
    worker = [sys.executable, "-m", "soniq", "worker", "soniq.contrib.django:app"]
    # The failing task below logs its traceback in the worker: expected.
    with process(worker, env=env, cwd=tmp_path, tracebacks=True), \
            http_server(server, port=port, env=env, cwd=tmp_path) as client:
        created = client.post("/orders/", params={"quantity": 2})
        assert created.status_code == 202, created.text
        order_id, task_id = created.json()["order_id"], created.json()["task_id"]
        result = poll(lambda: finished(client, task_id), what="the task to finish")
        assert result == {"status": "SUCCESSFUL", "attempts": 1, "queue": "shipping", "errors": [],
                          "return_value": {"order_id": order_id, "shipped": True}}
        assert client.get(f"/orders/{order_id}/").json()["shipped"] is True

        too_many = client.post("/orders/", params={"quantity": 50}).json()["task_id"]
        failed = poll(lambda: finished(client, too_many), what="the failing task to finish")
        assert failed["status"] == "FAILED"
        assert failed["errors"] == ["shop.tasks.OutOfStockError"]

        rolled_back = client.post("/orders/", params={"quantity": 1, "rollback": 1})
        assert rolled_back.status_code == 409
        assert client.get("/tasks/0190c2a4-0000-7000-8000-000000000000/").status_code == 404

    # What Soniq stored: two jobs, none for the rolled-back order; Django's priority 10 sits
    # above Soniq's default (lower runs first).
    reader = Soniq(database_url=soniq_db)
    with reader.sync as jobs:
        stored = jobs.list_jobs()
    assert sorted(job["status"] for job in stored) == ["dead_letter", "done"]
    assert {job["job_name"] for job in stored} == {"django.task"}
    assert {job["queue"] for job in stored} == {"shipping"}
    assert {job["priority"] for job in stored} == {reader.settings.priority - 10}
    assert {job["args"]["task_path"] for job in stored} == {"shop.tasks.ship_order"}



def test_exception_paths_come_from_the_traceback() -> None:
    from soniq.contrib.django import _exception_path

    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1\nshop.errors.OutOfStock: no\n"
    assert _exception_path({"type": "OutOfStock", "traceback": tb}) == "shop.errors.OutOfStock"
    assert _exception_path({"type": "ValueError", "traceback": "ValueError: bad"}) == \
        "builtins.ValueError"
    assert _exception_path({"type": "Timeout", "traceback": None}) == "Timeout"


def test_every_soniq_status_maps_to_a_django_one() -> None:
    from soniq.contrib.django import _STATUS, TaskResultStatus
    from soniq.types import JobStatus

    assert set(_STATUS) == set(JobStatus)
    assert _STATUS[JobStatus.QUEUED] == TaskResultStatus.READY
    assert _STATUS[JobStatus.CANCELLED] == TaskResultStatus.FAILED
