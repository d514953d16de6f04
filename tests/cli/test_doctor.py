"""``soniq doctor``: every verdict from the facts (in-process), and the command end to end."""

from __future__ import annotations

from typing import Any

import pytest

from soniq.cli.doctor import Check, judge
from soniq.errors import DatabaseError, SchemaMissingError
from soniq.settings import load_settings
from soniq.types import DatabaseInfo
from tests.cli.cli import ok_json, soniq
from tests.cli.conftest import InProcess

URL = "postgresql://postgres@db/app"


def facts(**changes: Any) -> DatabaseInfo:
    info: DatabaseInfo = {
        "backend": "postgres", "server_version": "16.2", "applied_migrations": ["0001_initial"],
        "pending_migrations": [], "round_trip": 0.001, "clock_skew": 0.01,
        "transaction_pooling": False, "listen_works": True, "max_connections": 100,
        "via_proxy": False, "listen_url": None,
    }
    info.update(changes)  # type: ignore[typeddict-item]
    return info


def verdicts(info: DatabaseInfo | None = None, problem: Exception | None = None,
             **settings: Any) -> dict[str, Check]:
    checks = judge(load_settings(settings), "postgres", info, problem,  # type: ignore[arg-type]
                   url=URL)
    return {check.name: check for check in checks}


def test_a_healthy_setup_passes_every_check() -> None:
    checks = verdicts(facts())
    assert {name: c.verdict for name, c in checks.items()} == {
        "database URL": "ok", "reachable": "ok", "schema": "ok", "pooling mode": "ok",
        "LISTEN/NOTIFY": "ok", "pool sizing": "ok", "clock skew": "ok"}
    assert checks["database URL"].detail == f"{URL} (postgres)"
    in_schema = verdicts(facts(), db_schema="tenant_a")["database URL"]
    assert in_schema.detail == f"{URL} (postgres, schema tenant_a)"
    down = verdicts(None, DatabaseError("cannot connect"), db_schema="tenant_a")["database URL"]
    assert down.detail.endswith("schema tenant_a)")  # said even when the database cannot be asked


def test_each_problem_fails_its_check_with_the_fix() -> None:
    pending = verdicts(facts(pending_migrations=["0002_schedules"]))["schema"]
    assert pending.verdict == "fail" and "soniq setup" in pending.detail
    bouncer = verdicts(facts(transaction_pooling=True, listen_works=False))
    assert bouncer["pooling mode"].verdict == "fail"
    assert "SONIQ_STATEMENT_CACHE_SIZE=0" in bouncer["pooling mode"].detail
    assert bouncer["LISTEN/NOTIFY"].verdict == "fail"
    configured = verdicts(facts(transaction_pooling=True, listen_works=False),
                          statement_cache_size=0)
    assert configured["pooling mode"].verdict == "ok"
    assert configured["LISTEN/NOTIFY"].verdict == "skip"
    needless = verdicts(facts(), statement_cache_size=0)["pooling mode"]  # a direct connection
    assert needless.verdict == "warn" and "unset SONIQ_STATEMENT_CACHE_SIZE" in needless.detail
    behind_bouncer = verdicts(facts(via_proxy=True, listen_works=False))  # same server session
    assert behind_bouncer["pooling mode"].verdict == "fail"
    assert verdicts(facts(via_proxy=True))["pooling mode"].detail.startswith("through a proxy")
    assert verdicts(facts(clock_skew=-2.0))["clock skew"].verdict == "warn"
    skewed = verdicts(facts(clock_skew=30.0))["clock skew"]
    assert skewed.verdict == "fail" and "30.00s ahead" in skewed.detail
    small_pool = verdicts(facts(), pool_max_size=4, pool_min_size=1)["pool sizing"]
    assert small_pool.verdict == "fail" and "SONIQ_POOL_MAX_SIZE>=5" in small_pool.detail
    assert verdicts(facts(max_connections=10))["pool sizing"].verdict == "warn"


def test_unreachable_and_missing_database() -> None:
    down = verdicts(None, DatabaseError("cannot connect to PostgreSQL at x"))
    assert down["reachable"].verdict == "fail" and "schema" not in down
    missing = verdicts(None, SchemaMissingError("the database does not exist; run `soniq setup`"))
    assert missing["reachable"].verdict == "ok" and missing["schema"].verdict == "fail"


def _doctor(*args: str) -> tuple[int, dict[str, str]]:
    done = soniq("doctor", "--json", *args)
    assert "Traceback" not in done.stderr
    return done.returncode, _verdicts(done.stdout)


def _verdicts(report: str) -> dict[str, str]:
    import json

    return {c["name"]: c["verdict"] for c in json.loads(report)["checks"]}


@pytest.mark.postgres
def test_doctor_on_postgres(pg_url: str, fresh_database: tuple[str, str], cli: InProcess) -> None:
    code, checks = _doctor("--database-url", pg_url)
    assert code == 0 and set(checks.values()) == {"ok"}, checks
    # The failing verdicts in-process (cli checks exit 3); the real exit 3: the test below.
    checks = _verdicts(cli("doctor", "--json", "--database-url", fresh_database[1], code=3)[0])
    assert checks["schema"] == "fail"
    checks = _verdicts(cli("doctor", "--json", "--database-url",
                           "postgresql://postgres:pw@127.0.0.1:1/x", code=3)[0])
    assert checks["reachable"] == "fail"


def test_doctor_on_sqlite_and_a_bad_url(sqlite_url: str, cli: InProcess) -> None:
    report = ok_json("doctor", "--database-url", sqlite_url)
    assert report["ok"] is True
    code, checks = _doctor("--database-url", "mysql://db/x")  # exit 3 from a real process
    assert code == 3 and checks == {"database URL": "fail"}
    table = cli("doctor", "--database-url", "mysql://db/x", code=3)[0]
    assert "FAIL" in table and "some checks failed" in table


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_database_info_on_each_backend(url: str) -> None:
    """``app.database_info()``, the facade method behind doctor, status and migrate-status."""
    from soniq import Soniq
    from soniq.errors import UnsupportedOperationError
    from soniq.migrations import load_migrations

    async with Soniq(database_url=url) as app:
        info = await app.database_info()
    backend = "postgres" if url.startswith("postgresql") else "sqlite"
    assert info["backend"] == backend and info["pending_migrations"] == []
    assert info["applied_migrations"] == [m.label for m in load_migrations(backend)]
    if backend == "postgres":
        assert info["listen_works"] is True and info["transaction_pooling"] is False
        assert info["via_proxy"] is False and info["max_connections"]
        assert info["clock_skew"] is not None and abs(info["clock_skew"]) < 1
    else:
        assert info["clock_skew"] is None and info["listen_works"] is None
    with pytest.raises(UnsupportedOperationError):
        await Soniq(backend="memory").database_info()


@pytest.mark.postgres
@pytest.mark.anyio
async def test_database_info_before_setup_and_unreachable(fresh_database: tuple[str, str],
                                                          pg_url: str) -> None:
    from soniq import Soniq

    async with Soniq(database_url=pg_url) as app, app.backend.acquire() as conn:
        rows = await conn.fetch("DELETE FROM soniq_migrations WHERE version > 1 "
                                "RETURNING version, name, applied_at")
        try:
            info = await app.database_info()
        finally:  # the worker's shared database must stay set up for the next tests
            await conn.executemany("INSERT INTO soniq_migrations VALUES ($1, $2, $3)",
                                   [tuple(row) for row in rows])
        assert info["applied_migrations"] == ["0001_initial"] and info["pending_migrations"]
    with pytest.raises(SchemaMissingError, match="soniq setup"):
        await Soniq(database_url=fresh_database[1]).database_info()
    with pytest.raises(DatabaseError, match="cannot connect"):
        await Soniq(database_url="postgresql://postgres@127.0.0.1:1/x").database_info()


def test_listen_url_verdicts() -> None:
    """With listen_url set, LISTEN/NOTIFY is judged on that connection (statement cache off, as
    behind PgBouncer): reachable, not itself transaction-pooled, a NOTIFY from database_url
    arriving there. Its password never shows."""
    direct = "postgresql://app:s3cret@db:5432/app"
    pooled_url = facts(transaction_pooling=True, via_proxy=True, listen_works=False)

    def check(found: dict[str, Any] | None) -> dict[str, Check]:
        return verdicts({**pooled_url, "listen_url": found},  # type: ignore[typeddict-item]
                        statement_cache_size=0, listen_url=direct)

    good = check({"error": None, "transaction_pooling": False, "listen_works": True})
    assert good["LISTEN/NOTIFY"].verdict == "ok", good
    assert "listen_url postgresql://app:***@db:5432/app" in good["LISTEN/NOTIFY"].detail
    assert "LISTEN on listen_url" in good["pooling mode"].detail
    down = check({"error": "could not connect", "transaction_pooling": None,
                  "listen_works": None})["LISTEN/NOTIFY"]
    assert down.verdict == "fail" and "unreachable" in down.detail and "could not connect" in down.detail
    pooled = check({"error": None, "transaction_pooling": True, "listen_works": None})
    assert pooled["LISTEN/NOTIFY"].verdict == "fail"
    assert "transaction pooling" in pooled["LISTEN/NOTIFY"].detail
    lost = check({"error": None, "transaction_pooling": False, "listen_works": False})
    assert lost["LISTEN/NOTIFY"].verdict == "fail" and "same database" in lost["LISTEN/NOTIFY"].detail
    for checks in (good, pooled, lost):
        assert all("s3cret" not in c.detail for c in checks.values())
