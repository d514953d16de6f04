"""The Django Tasks backend in-process: commit semantics, context, async tasks, deferral,
priorities and results (Django is configured by ``_django_tasks`` for this process)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest

pytest.importorskip("django")

from django.db import transaction
from django.utils import timezone

from soniq.contrib.django import JOB_NAME, TaskResultStatus, worker_app
from soniq.testing import drain

from . import _django_tasks as tasks


def run_due(alias: str = "default") -> list[str]:
    app = worker_app(alias)
    return [record["id"] for record in anyio.run(drain, app)]


def stored_ids(alias: str = "default") -> set[str]:
    return {job["id"] for job in worker_app(alias).sync.list_jobs(limit=1000)}


def enqueue_then_roll_back(task: Any, *args: Any) -> str:
    ids = []
    try:
        with transaction.atomic():
            ids.append(task.enqueue(*args).id)
            raise LookupError("roll back")
    except LookupError:
        pass
    return str(ids[0])


def test_enqueue_waits_for_the_transaction_to_commit() -> None:
    with transaction.atomic():
        result = tasks.add.enqueue(2, 3)
        assert result.status == TaskResultStatus.READY
        assert result.id not in stored_ids()  # not written yet
    assert result.id in stored_ids()
    rolled_back = enqueue_then_roll_back(tasks.add, 4, 5)
    assert rolled_back not in stored_ids()
    assert result.id in run_due()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    assert result.attempts == 1 and result.errors == []
    assert result.finished_at is not None and result.started_at is not None


def test_enqueue_on_commit_can_be_turned_off() -> None:
    result_id = enqueue_then_roll_back(tasks.eager_add, 1, 1)
    assert result_id in stored_ids("eager")  # written at once, rollback or not
    assert result_id in run_due("eager")
    assert tasks.eager_add.get_result(result_id).return_value == 2


def test_context_async_tasks_and_priorities() -> None:
    ctx = tasks.whoami.enqueue(label="x")
    loud = tasks.shout.enqueue("hey")
    job = worker_app().sync.get_job(ctx.id)
    assert job is not None and job["queue"] == "ctx" and job["job_name"] == JOB_NAME
    add_job = worker_app().sync.get_job(tasks.add.enqueue(1, 2).id)
    assert add_job is not None
    assert add_job["priority"] == job["priority"] + 5  # Django -5 runs after Django 0
    run_due()
    assert tasks.whoami.get_result(ctx.id).return_value == {"label": "x", "id": ctx.id,
                                                              "attempt": 1}
    assert tasks.shout.get_result(loud.id).return_value == "HEY"


def test_run_after_defers_and_failures_show_while_retrying() -> None:
    later = tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    flaky = tasks.flaky.enqueue()
    assert flaky.id in run_due()  # RETRIES=1 with no delay: both attempts run here
    assert later.id not in run_due()
    flaky.refresh()
    assert flaky.status == TaskResultStatus.SUCCESSFUL
    assert flaky.return_value == "second attempt works" and flaky.attempts == 2
    [error] = flaky.errors  # the failed first attempt stays on record
    assert error.exception_class_path == "builtins.ConnectionError"
    assert "first attempt fails" in error.traceback
    assert tasks.add.get_result(later.id).status == TaskResultStatus.READY


def test_unknown_results() -> None:
    from soniq.contrib.django import TaskResultDoesNotExist

    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("0190c2a4-0000-7000-8000-000000000000")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("not-an-id")
