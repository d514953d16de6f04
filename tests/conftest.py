"""Shared fixtures: every async test runs on asyncio and trio (modules set
``pytestmark = pytest.mark.anyio``); storage fixtures give each test a
fresh backend of each kind.

PostgreSQL: each pytest(-xdist) worker creates its own database on the server named by
``SONIQ_TEST_PG_URL`` (default: the machine's server on 127.0.0.1:5432), migrates it once, empties
the tables before each test, and drops the database at the end. With ``CI=true`` an unreachable
server fails the PostgreSQL tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from soniq import Soniq
from soniq.backends.base import StorageBackend

PG_ADMIN_URL = os.environ.get("SONIQ_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("memory", "sqlite", "postgres")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one test worker more than there are CPUs. Many tests wait on subprocesses,
    servers and the database rather than compute, so a spare worker keeps the CPUs busy."""
    return (os.cpu_count() or 1) + 1


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _url_for(database: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of a reachable PostgreSQL server (fails in CI, skips locally, otherwise)."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def pg_database(pg_server: str, worker_id: str) -> Iterator[str]:
    """A migrated database private to this test worker; yields its URL."""
    name = f"soniq_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    url = _url_for(name)
    from soniq.backends.postgres import PostgresBackend
    from soniq.settings import load_settings

    async def migrate() -> None:
        backend = PostgresBackend(url, load_settings({"database_url": url}))
        try:
            await backend.migrate()
        finally:
            await backend.close()

    asyncio.run(migrate())  # creates the database too
    yield url
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _empty_pg(url: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename LIKE 'soniq%' AND tablename <> 'soniq_migrations'"
            )
            if tables:
                names = ", ".join(f'"{t["tablename"]}"' for t in tables)
                await conn.execute(f"TRUNCATE {names} CASCADE")
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def fresh_database(pg_server: str) -> Iterator[tuple[str, str]]:
    """(name, url) of a database that does not exist yet; dropped afterwards if it does."""
    name = f"soniq_test_fresh_{uuid.uuid4().hex[:12]}"
    yield name, _url_for(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The worker's PostgreSQL database, emptied for this test."""
    _empty_pg(pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return str(tmp_path / "soniq.db")


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "postgres":
        request.applymarker(pytest.mark.postgres)
    return name


@pytest.fixture
def database_url(backend_name: str, request: pytest.FixtureRequest) -> str | None:
    """The URL for ``backend_name`` (None for memory)."""
    if backend_name == "postgres":
        return str(request.getfixturevalue("pg_url"))
    if backend_name == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return None


@pytest.fixture
async def app(backend_name: str, database_url: str | None) -> AsyncIterator[Soniq]:
    """A fresh Soniq on each backend (short intervals so nothing waits long)."""
    soniq = Soniq(database_url=database_url, backend=backend_name if database_url is None else None,
                  poll_interval=0.05, heartbeat_interval=0.1, heartbeat_timeout=2.0)
    try:
        yield soniq
    finally:
        await soniq.close()


@pytest.fixture
async def storage(app: Soniq) -> StorageBackend:
    """The app's storage backend, initialised."""
    await app.ensure_initialized()
    return app.backend
