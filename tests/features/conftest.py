"""Fixtures of the feature tests: more Soniq instances on the ``app`` fixture's storage."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from soniq import Soniq


@pytest.fixture
async def other(app: Soniq, database_url: str | None) -> AsyncIterator[Callable[..., Soniq]]:
    """``other(**settings)``: another Soniq on the app's database (memory: its backend), with
    nothing registered; closed after the test (a test may close it sooner)."""
    made: list[Soniq] = []

    def make(**settings: Any) -> Soniq:
        backend = app.backend if database_url is None else None
        soniq = Soniq(database_url=database_url, backend=backend, **settings)
        made.append(soniq)
        return soniq

    try:
        yield make
    finally:
        for soniq in made:
            await soniq.close()


@pytest.fixture
def producer(other: Callable[..., Soniq]) -> Soniq:
    """A producer that registers nothing and enqueues by any name (a web app, say)."""
    return other(enqueue_validation="none")
