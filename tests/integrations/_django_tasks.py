"""Django configured in-process for the backend's finer points (the e2e test uses subprocesses).

Importing this module configures Django once for the test process: two task backends on the
memory store (one enqueueing on commit, one at once) and an in-memory SQLite for transactions.
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings

if not settings.configured:
    _options = {"DATABASE_URL": "memory://", "SETTINGS": {"poll_interval": 0.05}}
    settings.configure(
        INSTALLED_APPS=["django_tasks"] if django.VERSION < (6,) else [],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
        TASKS={
            "default": {"BACKEND": "soniq.contrib.django.SoniqBackend", "QUEUES": [],
                        "OPTIONS": {**_options, "RETRIES": 1}},
            "eager": {"BACKEND": "soniq.contrib.django.SoniqBackend",
                      "OPTIONS": {**_options, "ENQUEUE_ON_COMMIT": False}},
        },
    )
    django.setup()

from soniq.contrib.django import Task, TaskContext  # after settings.configure

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

attempts: list[int] = []


@task(priority=-5)
def add(a: int, b: int) -> int:
    return a + b


@task(takes_context=True, queue_name="ctx")
def whoami(context: TaskContext, label: str) -> dict[str, Any]:
    return {"label": label, "id": context.task_result.id, "attempt": context.attempt}


@task()
async def shout(word: str) -> str:
    return word.upper()


@task()
def flaky() -> str:
    attempts.append(1)
    if len(attempts) == 1:
        raise ConnectionError("first attempt fails")
    return "second attempt works"


eager_add = add.using(backend="eager")
assert isinstance(eager_add, Task)
