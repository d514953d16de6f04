"""``db_schema`` on the command line: ``soniq setup`` with ``SONIQ_DB_SCHEMA`` creates the schema
and everything in it (``soniq status`` and ``soniq doctor`` name it); ``soniq migrations sql
--db-schema`` prints a script that does the same."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from soniq import Soniq
from tests.cli.cli import clean_env, fails, ok, ok_json
from tests.helpers import on_connection

pytestmark = pytest.mark.postgres


async def _tables(url: str) -> dict[str, set[str]]:
    """Soniq's tables per schema in the database at ``url``."""
    rows = await on_connection(url, lambda conn: conn.fetch(
        "SELECT schemaname, tablename FROM pg_tables WHERE tablename LIKE 'soniq%'"))
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["schemaname"], set()).add(row["tablename"])
    return found


async def _accepted(url: str, schema: str) -> list[str]:
    """What an app in ``schema`` says is pending, after opening (which checks the schema)."""
    async with Soniq(database_url=url, db_schema=schema) as app:
        return (await app.database_info())["pending_migrations"]


def test_setup_with_soniq_db_schema_creates_the_schema(fresh_database: tuple[str, str]) -> None:
    url = fresh_database[1]
    out = ok("setup", env=clean_env(SONIQ_DATABASE_URL=url, SONIQ_DB_SCHEMA="from_setup"))
    assert "Applied" in out and "(schema from_setup)" in out
    tables = anyio.run(_tables, url)
    assert set(tables) == {"from_setup"}, "nothing in public"
    assert {"soniq_jobs", "soniq_migrations", "soniq_events"} <= tables["from_setup"]
    assert anyio.run(_accepted, url, "from_setup") == []
    again = ok("setup", env=clean_env(SONIQ_DATABASE_URL=url, SONIQ_DB_SCHEMA="from_setup"))
    assert "up to date" in again
    status = ok_json("status", env=clean_env(SONIQ_DATABASE_URL=url, SONIQ_DB_SCHEMA="from_setup"))
    assert status["db_schema"] == "from_setup" and status["schema"]["pending"] == []
    doctor = ok_json("doctor", env=clean_env(SONIQ_DATABASE_URL=url, SONIQ_DB_SCHEMA="from_setup"))
    details = {check["name"]: check["detail"] for check in doctor["checks"]}
    assert doctor["ok"] and details["database URL"].endswith("(postgres, schema from_setup)")
    bad = fails(2, "setup", env=clean_env(SONIQ_DATABASE_URL=url, SONIQ_DB_SCHEMA="Bad-Name"))
    assert "db_schema" in bad and "'Bad-Name'" in bad


def test_migrations_sql_for_a_schema_applied_by_hand_counts_as_set_up(
        fresh_database: tuple[str, str]) -> None:
    url = fresh_database[1]
    script = ok("migrations", "sql", "--db-schema", "by_hand")
    assert script.count('SET LOCAL search_path TO "by_hand";') == script.count("BEGIN;") > 10
    assert 'CREATE SCHEMA IF NOT EXISTS "by_hand";' in script
    ok("setup", env=clean_env(SONIQ_DATABASE_URL=url))  # creates the database (in public)

    async def apply() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(script)
            # The script's SET LOCAL ended with each transaction: the session is untouched.
            assert await conn.fetchval("SHOW search_path") == '"$user", public'
        finally:
            await conn.close()

    anyio.run(apply)
    assert anyio.run(_tables, url)["by_hand"] == anyio.run(_tables, url)["public"]
    assert anyio.run(_accepted, url, "by_hand") == []
    assert "up to date" in ok("setup", env=clean_env(SONIQ_DATABASE_URL=url,
                                                     SONIQ_DB_SCHEMA="by_hand"))
    assert "--db-schema 'No;'" in fails(2, "migrations", "sql", "--db-schema", "No;")
    assert "PostgreSQL only" in fails(2, "migrations", "sql", "--backend", "sqlite",
                                      "--db-schema", "x")
