"""The Soniq pytest plugin (entry point ``pytest11``; loaded whenever Soniq is installed).

Fixtures:

- ``soniq_app``: a fresh :class:`~soniq.Soniq` for one test, closed afterwards; memory backend
  and manual mode unless the ``soniq`` marker says otherwise. To test your own app instead,
  override it in your ``conftest.py`` (the helpers take any app)::

      @pytest.fixture
      async def soniq_app(anyio_backend):
          with testing_mode(myproject.jobs.app, "inline"):
              yield myproject.jobs.app

- ``soniq_database_url``: the PostgreSQL URL for ``backend="postgres"``: ``--soniq-database-url``,
  the ``soniq_database_url`` ini option, or ``SONIQ_TEST_DATABASE_URL``. Override it to hand
  out a database of your own.

Marker: ``@pytest.mark.soniq(backend="memory"|"sqlite"|"postgres", mode="manual"|"inline",
**settings)``. With PostgreSQL the fixture migrates the database (``app.setup()``) and empties
Soniq's tables before the test: point it at a test database only.

The fixture is async, so tests that use it run under AnyIO (``pytest.mark.anyio``); it runs on
the backend of the ``anyio_backend`` fixture.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from soniq.testing import testing_mode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from soniq.app import Soniq

# soniq.app is imported by the fixture that uses it: this plugin loads in every pytest run of a
# project that has Soniq installed, and its startup should not pay for the library.

__all__ = ["soniq_app", "soniq_app_options", "soniq_database_url"]

_ENV = "SONIQ_TEST_DATABASE_URL"
#: Short intervals so nothing in a test waits long for a poll or a heartbeat.
_FAST = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "heartbeat_timeout": 2.0,
         "error_retry_delay": 0.1, "shutdown_timeout": 5.0}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("soniq")
    group.addoption("--soniq-database-url", default=None,
                    help=f"PostgreSQL URL for @pytest.mark.soniq(backend='postgres') "
                         f"(default: ${_ENV})")
    parser.addini("soniq_database_url", "PostgreSQL URL for @pytest.mark.soniq(backend='postgres')")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "soniq(backend='memory', mode='manual', **settings): configure the soniq_app fixture "
        "(backend: memory, sqlite or postgres; mode: manual or inline)",
    )


@pytest.fixture
def soniq_database_url(request: pytest.FixtureRequest) -> str | None:
    """The PostgreSQL URL the ``soniq_app`` fixture uses for ``backend="postgres"``."""
    url = request.config.getoption("--soniq-database-url") or \
        request.config.getini("soniq_database_url") or os.environ.get(_ENV)
    return str(url) if url else None


@pytest.fixture
def soniq_app_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``Soniq(...)`` keyword arguments and the mode for ``soniq_app``, from the ``soniq`` marker.

    Resolved outside the event loop, so fixtures it pulls in (``tmp_path``, a database URL) may
    do blocking set-up of their own.
    """
    marker = request.node.get_closest_marker("soniq")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    backend = options.pop("backend", "memory")
    mode = options.pop("mode", "manual")
    kwargs: dict[str, Any] = {**_FAST, **options}
    if backend == "memory":
        kwargs["backend"] = "memory"
    elif backend == "sqlite":
        kwargs["database_url"] = str(request.getfixturevalue("tmp_path") / "soniq.db")
    elif backend == "postgres":
        url = request.getfixturevalue("soniq_database_url")
        if not url:
            pytest.fail(f"@pytest.mark.soniq(backend='postgres') needs a database: pass "
                        f"--soniq-database-url, set the soniq_database_url ini option or "
                        f"{_ENV}, or override the soniq_database_url fixture")
        kwargs["database_url"] = url
    else:
        raise pytest.UsageError(f"@pytest.mark.soniq(backend={backend!r}): use 'memory', "
                                "'sqlite' or 'postgres'")
    return {"mode": mode, "postgres": backend == "postgres", "kwargs": kwargs}


@pytest.fixture
async def soniq_app(soniq_app_options: dict[str, Any], anyio_backend: Any) -> AsyncIterator[Soniq]:
    """A fresh Soniq for this test (see the module docstring for the ``soniq`` marker)."""
    from soniq.app import Soniq

    app = Soniq(**soniq_app_options["kwargs"])
    try:
        if soniq_app_options["postgres"]:
            await app.setup()
            await _empty_tables(app)
        with testing_mode(app, soniq_app_options["mode"]):
            yield app
    finally:
        await app.close()


async def _empty_tables(app: Soniq) -> None:
    """Empty Soniq's PostgreSQL tables (not its migration history) so each test starts clean:
    in the app's ``db_schema``, or the connection's default schema."""
    await app.ensure_initialized()
    async with app.backend.acquire() as conn:
        rows = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables "
            "WHERE schemaname = COALESCE($1::text, current_schema()) "
            "AND tablename LIKE 'soniq%' AND tablename <> 'soniq_migrations'",
            app.settings.db_schema)
        if rows:
            names = ", ".join(f"{_quote(row['schemaname'])}.{_quote(row['tablename'])}"
                              for row in rows)
            await conn.execute(f"TRUNCATE {names} CASCADE")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
