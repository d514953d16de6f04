"""The plugin's ``soniq_database_url`` fixture hands out this run's PostgreSQL database."""

from __future__ import annotations

import pytest


@pytest.fixture
def soniq_database_url(pg_url: str) -> str:
    return pg_url
