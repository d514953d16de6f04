"""Fixtures of the reliability suite: the ledger, worker subprocesses, a private cluster.

Everything here runs on asyncio: what is under test is worker processes driven from outside (the
in-process trio paths are covered by tests/runtime and tests/backends). A test that needs the
fault proxy (tests/reliability/proxy.py) serves it from its own task group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from soniq import Soniq
from tests.reliability.cluster import PrivateCluster
from tests.reliability.ledger import Ledger
from tests.reliability.workers import Workers


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def ledger(pg_url: str) -> Ledger:
    """The ledger, in the test worker's database on the shared server (always up)."""
    book = Ledger(pg_url)
    await book.create()
    return book


def chaos_app(url: str) -> Soniq:
    """A producer for ``url`` that knows the chaos jobs (so enqueues are validated)."""
    from tests.apps import chaos

    soniq = Soniq(database_url=url)
    for spec in chaos.app.registry:
        soniq.registry.register(spec.func, name=spec.name, retries=spec.max_retries,
                                concurrency_limit=spec.concurrency_limit,
                                concurrency_key=spec.concurrency_key, ordered=spec.ordered,
                                rate_limit=None if spec.rate_limit is None
                                else str(spec.rate_limit), rate_key=spec.rate_key)
    return soniq


#: Runs a module's tests once on SQLite and once on PostgreSQL (``url``, ``app`` and ``pool``).
ON_SQLITE_AND_POSTGRES = pytest.mark.parametrize("url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """The queue's database: the test's PostgreSQL one, or a SQLite file where a test is
    parametrized so (:data:`ON_SQLITE_AND_POSTGRES`)."""
    if getattr(request, "param", "postgres") == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("sqlite_url"))


@pytest.fixture
async def app(url: str) -> AsyncIterator[Soniq]:
    """A producer on the queue's database that knows the chaos jobs."""
    soniq = chaos_app(url)
    try:
        yield soniq
    finally:
        await soniq.close()


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster, started, with a migrated database ``soniq``."""
    pg = PrivateCluster()
    try:
        pg.start()
        app = Soniq(database_url=pg.url("soniq"))

        async def setup() -> None:
            try:
                await app.setup()  # creates the database too
            finally:
                await app.close()

        anyio.run(setup)
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def workers(pg_url: str, ledger: Ledger, tmp_path: Path) -> Iterator[Workers]:
    """Worker subprocesses, on the test's database unless ``start(url=...)`` says otherwise."""
    pool = Workers(pg_url, ledger.url, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
def pool(workers: Workers, url: str) -> Workers:
    """The worker subprocesses, on the queue's database."""
    workers.env["SONIQ_DATABASE_URL"] = url
    return workers
