"""Every management command as a real subprocess on SQLite and PostgreSQL: output, exit code and
the effect in the database."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from soniq import Soniq
from soniq.ids import new_id
from soniq.testing import drain
from soniq.types import WorkerInfo
from tests.cli.cli import clean_env, fails, in_db, ok
from tests.cli.conftest import Commands, InProcess

APP = "tests.cli.jobs_app"


def test_enqueue_list_show_cancel_delete(url: str, cli: InProcess, commands: Commands) -> None:
    added = commands.ok("enqueue", f"{APP}:add", "--args", '{"a": 1, "b": 2}',
                        "--priority", "5").strip()
    record = in_db(url, lambda app: app.get_job(added))
    assert record is not None
    assert (record["job_name"], record["queue"], record["priority"], record["args"]) == \
        ("cli.add", "math", 5, {"a": 1, "b": 2})
    later = cli.json("enqueue", "cli.add", "--args", '{"a": 3, "b": 4}', "--at", "2h",
                     "--queue", "slow", SONIQ_DATABASE_URL=url)["id"]
    scheduled = in_db(url, lambda app: app.get_job(later))
    assert scheduled is not None and scheduled["queue"] == "slow"
    assert scheduled["scheduled_at"] > datetime.now(UTC) + timedelta(minutes=119)
    by_name = cli("--database-url", url, "enqueue", "cli.unknown-to-this-process")[0].strip()

    listed = commands.ok_json("jobs", "list")
    assert {job["id"] for job in listed} == {added, later, by_name}
    assert [j["id"] for j in cli.json("jobs", "list", "--queue", "math")] == [added]
    table = cli("jobs", "list", "--status", "queued", "--limit", "10")[0]
    assert table.splitlines()[0].split()[:4] == ["id", "job", "queue", "status"]
    assert added in table and "cli.add" in table and "0/4" in table

    shown = commands.ok("jobs", "show", added)
    assert re.search(r"^attempts +0 of 4$", shown, re.M) and "math" in shown
    assert cli.json("jobs", "show", added)["args"] == {"a": 1, "b": 2}

    assert commands.ok("jobs", "cancel", later).strip() == f"cancelled {later}"
    assert in_db(url, lambda app: app.get_job(later))["status"] == "cancelled"  # type: ignore[index]
    assert "already finished" in cli("jobs", "cancel", later, code=1)[1]
    assert commands.ok("jobs", "delete", by_name).strip() == f"deleted {by_name}"
    assert in_db(url, lambda app: app.get_job(by_name)) is None
    assert "no job with id" in cli("jobs", "show", by_name, code=1)[1]
    assert "no such job" in cli("jobs", "delete", by_name, code=1)[1]


def _dead_letters(url: str, count: int) -> list[str]:
    """``count`` jobs that failed for good (run by an in-process worker)."""

    async def make(app: Soniq) -> list[str]:
        async def fail(n: int) -> None:
            raise RuntimeError(f"boom {n}")

        app.job(name="cli.fail", retries=0)(fail)
        ids = [await app.enqueue("cli.fail", n=n) for n in range(count)]
        await app.run_worker(run_once=True)
        return ids

    return in_db(url, make)


def test_dead_letter_commands_and_retry(url: str, tmp_path: Path, cli: InProcess,
                                        commands: Commands) -> None:
    first, second, third = _dead_letters(url, 3)
    listed = commands.ok_json("dead-letter", "list")
    assert {job["id"] for job in listed} == {first, second, third}
    assert "RuntimeError: boom" in cli("dead-letter", "list", "--job-name", "cli.fail",
                                       SONIQ_DATABASE_URL=url)[0]

    export = tmp_path / "dead.jsonl"
    code, _, err = commands.run("dead-letter", "export", "--output", str(export))
    assert code == 0 and "exported 3" in err
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert {row["id"] for row in rows} == {first, second, third}
    assert rows[0]["errors"][0]["type"] == "RuntimeError"
    assert len(cli("dead-letter", "export", "--limit", "2")[0].splitlines()) == 2

    inspected = commands.ok("inspect", first)
    assert "dead_letter" in inspected and "attempt 1 failed" in inspected
    assert "Traceback" in inspected and "RuntimeError: boom" in inspected
    details = cli.json("inspect", first)
    assert details["errors"][0]["traceback"] and details["logs"] == []

    assert commands.ok("jobs", "retry", first).strip() == f"queued again {first}"
    assert commands.ok("dead-letter", "replay", second).strip() == f"queued again {second}"
    statuses = in_db(url, lambda app: _statuses(app, first, second, third))
    assert statuses == ["queued", "queued", "dead_letter"]
    assert "only dead-lettered jobs can be retried" in cli("jobs", "retry", first, code=1)[1]
    assert "not a dead-lettered job" in cli("dead-letter", "delete", first, code=1)[1]

    assert commands.ok("dead-letter", "delete", third).strip() == f"deleted {third}"
    assert in_db(url, lambda app: app.get_job(third)) is None
    assert "--older-than" in cli("dead-letter", "purge", code=2)[1]
    assert "not both" in cli("dead-letter", "replay", "--all", first, code=2)[1]

    in_db(url, _unknown_ended)  # no live worker knows cli.fail: the cleanup ends them again
    assert cli("dead-letter", "replay", "--all", "--limit", "1")[0].startswith("queued 1 ")
    assert cli("dead-letter", "purge", "--older-than", "1d")[0].startswith("deleted 0 ")
    assert commands.ok("dead-letter", "purge", "--all").startswith("deleted 1 ")
    assert cli.json("dead-letter", "list") == []


async def _unknown_ended(app: Soniq) -> list[str]:
    """What a cleanup round with ``unknown_job_grace=0`` does when no worker knows a name."""
    await app.ensure_initialized()
    return await app.backend.dead_letter_unknown([], grace=0)


async def _statuses(app: Soniq, *ids: str) -> list[str | None]:
    return [(record or {}).get("status") for record in [await app.get_job(i) for i in ids]]


def test_schedules_commands(url: str, cli: InProcess, commands: Commands) -> None:
    in_db(url, lambda app: app.scheduler.add("nightly", cron="0 3 * * *", target="cli.add",
                                             args={"a": 1, "b": 1}))
    [schedule] = commands.ok_json("schedules", "list")
    assert (schedule["name"], schedule["cron"], schedule["paused"]) == ("nightly", "0 3 * * *", False)
    assert "0 3 * * *" in cli("schedules", "list", SONIQ_DATABASE_URL=url)[0]

    assert commands.ok("schedules", "pause", "nightly").strip() == "paused schedule nightly"
    assert in_db(url, lambda app: app.scheduler.get("nightly"))["paused"] is True  # type: ignore[index]
    assert cli("schedules", "resume", "nightly")[0].strip() == "resumed schedule nightly"
    assert in_db(url, lambda app: app.scheduler.get("nightly"))["paused"] is False  # type: ignore[index]
    assert commands.ok("schedules", "remove", "nightly").strip() == "removed schedule nightly"
    assert in_db(url, lambda app: app.scheduler.get("nightly")) is None
    assert "no schedule named 'nightly'" in cli("schedules", "remove", "nightly", code=1)[1]


def test_schedules_list_marks_jobs_the_app_does_not_register(
        url: str, cli: InProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #26, finding 6: given the app, ``schedules list`` marks the schedules its workers
    leave alone (their job is not registered there); without an app nothing is checked."""
    module = f"service_{tmp_path.name.replace('-', '_')}"  # a fresh import: it reads this URL
    (tmp_path / f"{module}.py").write_text(
        "from soniq import Soniq\n\napp = Soniq()\n\n\n@app.job(name='cli.add')\n"
        "async def add(a: int, b: int) -> int:\n    return a + b\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    async def add(app: Soniq) -> None:
        await app.scheduler.add("nightly", cron="0 3 * * *", target="cli.add",
                                args={"a": 1, "b": 1})
        await app.scheduler.add("invoices", every=60, target="billing.invoice")

    in_db(url, add)
    listed = cli.json("schedules", "list", f"{module}:app", SONIQ_DATABASE_URL=url)
    assert {s["name"]: s["job_known"] for s in listed} == {"invoices": False, "nightly": True}
    monkeypatch.delitem(sys.modules, module)  # the command closed that app: import a new one
    rows = {line.split()[0]: line for line in
            cli("schedules", "list", f"{module}:app", SONIQ_DATABASE_URL=url)[0].splitlines()}
    assert "billing.invoice (unknown job)" in rows["invoices"]
    assert "unknown job" not in rows["nightly"]
    unchecked = cli.json("schedules", "list", SONIQ_DATABASE_URL=url)
    assert [s["job_known"] for s in unchecked] == [None, None]
    assert "unknown job" not in cli("schedules", "list", SONIQ_DATABASE_URL=url)[0]


def test_status_and_migrate_status(url: str, cli: InProcess, commands: Commands) -> None:

    async def fill(app: Soniq) -> None:
        await app.enqueue_many("cli.add", [{"a": i, "b": i} for i in range(3)], queue="math")
        await app.enqueue("cli.add", a=0, b=0, queue="other")

    in_db(url, fill)
    status: dict[str, Any] = commands.ok_json("status")
    assert [(q["queue"], q["queued"], q["total"]) for q in status["queues"]] == \
        [("math", 3, 3), ("other", 1, 1)]
    assert status["schema"]["pending"] == [] and status["schema"]["version"].startswith("00")
    assert status["workers"] == []
    text = commands.ok("status", f"{APP}:app")
    assert "up to date" in text and "Queues" in text and "math" in text

    migrations = commands.ok_json("migrate-status")
    assert migrations["pending"] == [] and migrations["applied"][0] == "0001_initial"
    assert "pending   none" in cli("migrate-status", SONIQ_DATABASE_URL=url)[0]


async def _noop() -> None:
    return None


def test_status_shows_live_workers_per_job_name_and_flags_the_unknown(
        url: str, commands: Commands) -> None:
    async def seed(app: Soniq) -> None:
        app.job(name="cli.gone")(_noop)
        app.job(name="cli.live")(_noop)
        await drain(app)  # a worker stored both definitions, then stopped (its row is gone)
        backend = app.backend
        await backend.register_worker(WorkerInfo(new_id(), "h", 1, None, 1, ("cli.live",)))
        await backend.register_worker(WorkerInfo(new_id(), "h", 2, None, 1, ("cli.gone",)),
                                      now=datetime.now(UTC) - timedelta(hours=1))  # silent

    in_db(url, seed)
    jobs = commands.ok_json("status")["jobs"]
    assert [(j["name"], j["queue"], j["live_workers"], j["flagged"]) for j in jobs] == [
        ("cli.gone", "default", 0, True), ("cli.live", "default", 1, False)]
    text = commands.ok("status")
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if line.startswith("cli.")}
    assert rows == {"cli.gone": ["(no", "live", "worker)", "default", "0"],
                    "cli.live": ["default", "1"]}
    assert "warning: no live worker knows cli.gone" in text


def test_enqueue_usage_errors(sqlite_url: str, cli: InProcess) -> None:
    env = clean_env(SONIQ_DATABASE_URL=sqlite_url)
    assert "--args is not valid JSON" in fails(2, "enqueue", f"{APP}:add", "--args", "{a: 1}", env=env)
    assert "'b'" in cli.fails(2, "enqueue", f"{APP}:add", "--args", '{"a": 1}',
                                SONIQ_DATABASE_URL=sqlite_url)
    assert "must be a JSON object" in cli("enqueue", "x", "--args", "[1]", code=2)[1]
    assert "not registered" in cli("enqueue", f"{APP}:not_a_job", code=2)[1]
    assert "has no attribute" in cli("enqueue", f"{APP}:nope", code=2)[1]
    assert "cannot import module" in cli("enqueue", "no_such_module:job", code=2)[1]
    assert "--at takes" in cli("enqueue", "x", "--at", "tomorrowish", code=2)[1]


@pytest.mark.postgres
def test_migrations_sql_applied_by_hand_counts_as_set_up(fresh_database: tuple[str, str],
                                                         cli: InProcess) -> None:
    import asyncpg

    script = ok("migrations", "sql")
    assert "CREATE TABLE soniq_jobs" in script
    assert "INSERT INTO soniq_migrations (version, name) VALUES (1, 'initial')" in script
    url = fresh_database[1]
    cli("setup", "--database-url", url)  # creates the database; then start again from nothing

    async def apply() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            await conn.execute(script)
        finally:
            await conn.close()

    import anyio

    anyio.run(apply)
    assert cli.json("migrate-status", "--database-url", url)["pending"] == []
    assert "up to date" in cli("setup", "--database-url", url)[0]
    later = cli("migrations", "sql", "--from-version", "2")[0]
    assert "0001_initial" not in later and "0002_" in later
    assert "CREATE TABLE" in cli("migrations", "sql", "--backend", "sqlite")[0]
    assert "no postgres migrations" in cli("migrations", "sql", "--from-version", "99", code=1)[1]

    async def drop_one() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("DELETE FROM soniq_migrations WHERE version > 1")
        finally:
            await conn.close()

    anyio.run(drop_one)
    pending = cli("migrate-status", "--database-url", url, code=3)[0]
    assert "0002_schedules" in pending and "run `soniq setup`" in pending
