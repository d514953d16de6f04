"""A Soniq backend for the Django Tasks API: ``@task`` functions run in ``soniq worker``.

Django 6 has the Tasks API built in (``django.tasks``); on Django 5.2 install the ``django-tasks``
backport (``pip install soniq[django]`` does). The backend serves either: it uses ``django.tasks``
when Django has it, else ``django_tasks``. ::

    # settings.py
    INSTALLED_APPS = [..., "django_tasks"]          # Django 5.2 with the backport only
    TASKS = {
        "default": {
            "BACKEND": "soniq.contrib.django.SoniqBackend",
            "QUEUES": [],                              # any queue name (or list the allowed ones)
            "OPTIONS": {
                "DATABASE_URL": "postgresql://localhost/myapp",   # default: SONIQ_DATABASE_URL
                # "APP": "myproject.jobs:app",         # or your own Soniq instance
                # "SETTINGS": {"max_retries": 5},      # Soniq settings for the app built here
                # "RETRIES": 0,                        # retries per task (default: max_retries)
                # "ENQUEUE_ON_COMMIT": True,           # the default
                # "DATABASE": "default",               # whose transaction to wait for
            },
        }
    }

    # tasks.py
    from django_tasks import task                   # Django 6: from django.tasks import task

    @task(queue_name="emails")
    def send_welcome(user_id: int) -> None: ...

    # a view
    send_welcome.enqueue(user_id=user.pk)

Then run the worker with your settings module: ``DJANGO_SETTINGS_MODULE=mysite.settings soniq
worker soniq.contrib.django:app`` (``SONIQ_DJANGO_TASKS_BACKEND`` names another alias).

Semantics:

- **Enqueue on commit.** Inside ``transaction.atomic()`` the job is written only when the
  transaction commits (``transaction.on_commit``), so a worker never runs a task for a row that
  was rolled back or is not visible yet; outside a transaction it is written at once. The
  returned ``TaskResult`` already has its final id. ``ENQUEUE_ON_COMMIT: False`` writes at once.
- Each task is one Soniq job named ``django.task`` whose arguments are the task's import path,
  ``args`` and ``kwargs`` (JSON, as Django requires). Django's priority (-100..100, higher first)
  maps onto Soniq's (lower first) around the ``priority`` setting; ``run_after`` is Soniq's
  ``scheduled_at``; ``queue_name`` is the Soniq queue.
- Failed attempts are retried with Soniq's retry policy; while a retry waits the result is
  ``READY`` with the error listed, and ``FAILED`` once retries are used up (or the job is
  cancelled). ``get_result`` works from any process.
- Task functions run in the worker's threads (async ones through ``async_to_sync``), with
  Django's database connections checked before and after each task as a request would.
- Enqueueing from sync code goes through ``app.sync`` (one portal loop with its own pool);
  ``aenqueue`` from async views hops to a thread like Django's own backends.
"""

from __future__ import annotations

import builtins
import os
import threading
from functools import partial
from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.db import close_old_connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from soniq.app import Soniq
from soniq.types import JobContext, JobStatus

try:  # Django >= 6: the Tasks API is part of Django
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError:  # Django 5.2 with the django-tasks backport
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started

if TYPE_CHECKING:
    from soniq.types import JobRecord, NewJob

__all__ = ["JOB_NAME", "SoniqBackend", "worker_app"]

#: The Soniq job that runs every Django task.
JOB_NAME = "django.task"
_STATUS = {
    JobStatus.WAITING: TaskResultStatus.READY,  # waits for its dependencies
    JobStatus.QUEUED: TaskResultStatus.READY,
    JobStatus.PROCESSING: TaskResultStatus.RUNNING,
    JobStatus.DONE: TaskResultStatus.SUCCESSFUL,
    JobStatus.DEAD_LETTER: TaskResultStatus.FAILED,
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}

# Django builds a backend per thread; the Soniq app (and its pools) is one per process and alias.
_apps: dict[tuple[str, str], Soniq] = {}
_apps_lock = threading.Lock()


class SoniqBackend(BaseTaskBackend):  # type: ignore[misc]
    """Django Tasks backend that stores tasks as Soniq jobs (see the module docstring)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        if not params.get("QUEUES", True):
            self.queues: set[str] = set()  # QUEUES: [] accepts any queue name
        options = {str(k).upper(): v for k, v in self.options.items()}
        unknown = set(options) - {"APP", "DATABASE_URL", "SETTINGS", "RETRIES",
                                  "ENQUEUE_ON_COMMIT", "DATABASE"}
        if unknown:
            raise ValueError(f"TASKS[{alias!r}]['OPTIONS'] has unknown key(s) {sorted(unknown)}")
        self._app_options = options
        self.enqueue_on_commit = bool(options.get("ENQUEUE_ON_COMMIT", True))
        self.database = str(options.get("DATABASE", "default"))

    @property
    def soniq(self) -> Soniq:
        """The Soniq app this backend enqueues into (one per process and alias)."""
        key = (self.alias, repr(sorted(self._app_options.items())))
        with _apps_lock:
            app = _apps.get(key)
            if app is None or app.is_closed:
                app = _apps[key] = _build_app(self._app_options)
            return app

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        app = self.soniq
        job = app.sync.prepare(
            JOB_NAME,
            {"task_path": task.module_path, "task_args": list(args), "task_kwargs": dict(kwargs),
             "alias": self.alias},
            queue=task.queue_name, priority=app.settings.priority - task.priority,
            scheduled_at=task.run_after, unique=False)
        result = TaskResult(
            task=task, id=job.id, status=TaskResultStatus.READY, enqueued_at=timezone.now(),
            started_at=None, last_attempted_at=None, finished_at=None, args=list(args),
            kwargs=dict(kwargs), backend=self.alias, errors=[], worker_ids=[])
        if self.enqueue_on_commit:
            transaction.on_commit(partial(self._write, app, job, result), using=self.database)
        else:
            self._write(app, job, result)
        return result

    def _write(self, app: Soniq, job: NewJob, result: TaskResult) -> None:
        app.sync.insert([job])
        task_enqueued.send(type(self), task_result=result)

    def get_result(self, result_id: str) -> TaskResult:
        record = self.soniq.sync.get_job(result_id)
        if record is None or record["job_name"] != JOB_NAME:
            raise TaskResultDoesNotExist(result_id)
        return _task_result(record, self.alias)


def _build_app(options: dict[str, Any]) -> Soniq:
    spec = options.get("APP")
    if spec:
        module, _, attribute = str(spec).replace(":", ".").rpartition(".")
        app = getattr(import_module(module), attribute, None) if module else None
        if not isinstance(app, Soniq):
            raise ValueError(f"OPTIONS['APP']={spec!r} is not a Soniq instance")
    else:
        app = Soniq(database_url=options.get("DATABASE_URL"), **dict(options.get("SETTINGS") or {}))
    if app.registry.get(JOB_NAME) is None:
        retries = options.get("RETRIES")
        app.job(name=JOB_NAME, **({} if retries is None else {"retries": retries}))(run_task)
    return app


def worker_app(alias: str | None = None) -> Soniq:
    """Set Django up (``DJANGO_SETTINGS_MODULE``) and return the Soniq app of the ``TASKS``
    backend ``alias`` (default ``SONIQ_DJANGO_TASKS_BACKEND``, else ``"default"``)."""
    import django

    django.setup()
    alias = alias or os.environ.get("SONIQ_DJANGO_TASKS_BACKEND", "default")
    backend = task_backends[alias]
    if not isinstance(backend, SoniqBackend):
        raise ValueError(f"TASKS[{alias!r}] is {type(backend).__name__}, not SoniqBackend")
    return backend.soniq


def __getattr__(name: str) -> Any:
    # ``soniq worker soniq.contrib.django:app``: the app is built only when the worker asks.
    if name == "app":
        return worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_task(task_path: str, task_args: list[Any], task_kwargs: dict[str, Any], alias: str,
             ctx: JobContext) -> Any:
    """The Soniq job behind every Django task: import the task and call it (in a worker thread)."""
    close_old_connections()
    try:
        task = import_string(task_path)
        if not isinstance(task, Task):
            raise TypeError(f"{task_path} is not a Django task (decorate it with @task)")
        now = timezone.now()
        result = TaskResult(
            task=task, id=ctx.job_id, status=TaskResultStatus.RUNNING,
            enqueued_at=ctx.created_at, started_at=now, last_attempted_at=now, finished_at=None,
            args=task_args, kwargs=task_kwargs, backend=alias, errors=[],
            worker_ids=[ctx.worker_id] * ctx.attempt)
        task_started.send(type(task.get_backend()), task_result=result)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *task_args, **task_kwargs)
            else:
                value = task.call(*task_args, **task_kwargs)
        except Exception:
            if ctx.attempt >= ctx.max_attempts:  # otherwise Soniq retries it: not finished yet
                object.__setattr__(result, "status", TaskResultStatus.FAILED)
                object.__setattr__(result, "finished_at", timezone.now())
                task_finished.send(type(task.get_backend()), task_result=result)
            raise
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "_return_value", value)
        task_finished.send(type(task.get_backend()), task_result=result)
        return value
    finally:
        close_old_connections()


def _task_result(record: JobRecord, alias: str) -> TaskResult:
    stored = record["args"]
    task = import_string(stored["task_path"])
    status = _STATUS[JobStatus(record["status"])]
    if status is TaskResultStatus.READY and record["attempts"] == 0:
        last_attempted = None
    else:
        last_attempted = record["started_at"]
    result = TaskResult(
        task=task, id=record["id"], status=status, enqueued_at=record["created_at"],
        started_at=record["started_at"], last_attempted_at=last_attempted,
        finished_at=record["finished_at"] if status in (TaskResultStatus.SUCCESSFUL,
                                                        TaskResultStatus.FAILED) else None,
        args=stored["task_args"], kwargs=stored["task_kwargs"], backend=alias,
        errors=[TaskError(exception_class_path=_exception_path(e), traceback=e.get("traceback")
                          or f"{e.get('type')}: {e.get('message')}")
                for e in record["errors"]],
        worker_ids=[record["worker_id"] or ""] * record["attempts"])
    if status is TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", record["result"])
    return result


def _exception_path(error: dict[str, Any]) -> str:
    """The dotted path of an attempt's exception class. Soniq stores the class name; the last
    line of the traceback names the module too (``myapp.errors.PaymentError: ...``)."""
    name = str(error.get("type") or "Exception")
    lines = [line for line in str(error.get("traceback") or "").splitlines() if line.strip()]
    if lines and not lines[-1].startswith(" "):
        head = lines[-1].split(":", 1)[0].strip()
        if head.endswith(name) and "." in head:
            return head
    return f"builtins.{name}" if isinstance(getattr(builtins, name, None), type) else name
