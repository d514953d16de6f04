"""``soniq setup`` and the CLI's error handling, as real subprocesses (and in-process where the
same mistake already has a real-process run in test_errors_and_help.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import pytest

from soniq.migrations import load_migrations
from tests.cli.conftest import InProcess

ROOT = Path(__file__).resolve().parents[2]


def soniq(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    return subprocess.run([sys.executable, "-m", "soniq", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**clean, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture
def fresh_pg_url(fresh_database: tuple[str, str]) -> str:
    """A database that does not exist yet, reached with a (trust-ignored) password to redact."""
    return fresh_database[1].replace("postgres@", "postgres:sekrit@", 1)


@pytest.mark.postgres
def test_setup_creates_the_database_and_is_idempotent(fresh_pg_url: str) -> None:
    first = soniq("setup", "--database-url", fresh_pg_url)
    assert first.returncode == 0, first.stderr
    labels = [m.label for m in load_migrations("postgres")]
    assert f"Applied {len(labels)} migration(s)" in first.stdout
    assert all(label in first.stdout for label in labels)
    assert "sekrit" not in first.stdout + first.stderr
    assert "postgres:***@" in first.stdout
    second = soniq("setup", env={"SONIQ_DATABASE_URL": fresh_pg_url})
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout


@pytest.mark.postgres
def test_two_setups_at_once_apply_each_migration_once(fresh_pg_url: str) -> None:
    soniq("setup", "--database-url", fresh_pg_url)  # the database must exist to race on it
    conn_url = fresh_pg_url

    async def reset() -> None:
        conn = await asyncpg.connect(conn_url)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        finally:
            await conn.close()

    anyio.run(reset)
    procs = [subprocess.Popen([sys.executable, "-m", "soniq", "setup", "--database-url", conn_url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    applied = [out for out, _ in outputs if "Applied" in out]
    assert len(applied) == 1 and sum("up to date" in out for out, _ in outputs) == 1


def test_setup_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = soniq("setup", "--database-url", str(path))
    assert first.returncode == 0 and "0001_initial" in first.stdout and path.exists()
    assert "up to date" in soniq("setup", "--database-url", str(path)).stdout


def test_unreachable_database_is_one_clear_line(cli: InProcess) -> None:
    line = cli.fails(1, "setup", "--database-url", "postgresql://nobody:pw@127.0.0.1:1/x")
    assert line.startswith("error: ") and ":pw@" not in line


def test_usage_errors_exit_2(cli: InProcess) -> None:
    assert "setup" in "".join(cli("stup", code=2))
    assert "no.such.module" in cli.fails(2, "worker", "no.such.module:app")
    assert "not a Soniq instance" in cli.fails(2, "worker", "tests.apps.chaos:record")


def test_help_lists_env_vars_and_exit_codes(cli: InProcess) -> None:
    top = soniq("--help")  # the real entry point; --version runs as one in test_global_options
    assert top.returncode == 0 and "Exit codes" in top.stdout and "worker" in top.stdout
    worker = cli("worker", "--help")[0]
    assert "SONIQ_APP" in worker and "130" in worker and "143" in worker
    assert cli("--version")[0].strip()
