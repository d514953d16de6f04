"""Settings of the example project: Django's data in SQLite, tasks in Soniq."""

from __future__ import annotations

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "mysite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["shop"]
if django.VERSION < (6,):
    INSTALLED_APPS.append("django_tasks")  # the backport of Django 6's Tasks API

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE_PATH", str(Path.cwd() / "django.sqlite3")),
    }
}

TASKS = {
    "default": {
        "BACKEND": "soniq.contrib.django.SoniqBackend",
        "QUEUES": [],  # any queue name
        "OPTIONS": {
            # Where Soniq keeps the jobs: a SQLite file, or PostgreSQL after `soniq setup`.
            "DATABASE_URL": os.environ.get("SONIQ_DATABASE_URL", "soniq.db"),
            "SETTINGS": {"poll_interval": 0.2},
            "RETRIES": 0,  # a failed task is FAILED at once, as with Django's own backends
        },
    }
}
