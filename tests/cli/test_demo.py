"""``soniq demo`` on a fresh directory with no database server: the README's first command."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from soniq.types import FINAL_STATUSES
from tests.cli.cli import clean_env, in_db, ok, soniq


@pytest.mark.slow
def test_demo_runs_every_job_to_a_final_state(tmp_path: Path) -> None:
    # No PostgreSQL: a URL that cannot work proves the demo never looks at it.
    env = clean_env(SONIQ_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    started = time.monotonic()
    out = ok("demo", cwd=tmp_path, env=env)
    assert time.monotonic() - started < 60
    assert "Demo finished" in out and "Try next:" in out and "soniq status" in out
    database = tmp_path / "soniq-demo.db"
    assert database.exists()

    jobs = in_db(str(database), lambda app: app.list_jobs(limit=1000))
    assert len(jobs) == 300
    statuses = {job["status"] for job in jobs}
    assert statuses <= FINAL_STATUSES and statuses == {"done", "dead_letter", "cancelled"}
    assert any(job["status"] == "done" and job["attempts"] == 2 for job in jobs)  # retried
    assert all(job["attempts"] == 3 for job in jobs if job["status"] == "dead_letter")

    # The commands it suggests work on the file it made.
    status = ok("status", "--database-url", str(database), cwd=tmp_path)
    assert "dead letter" in status and "images" in status
    rerun = soniq("demo", "--jobs", "5", cwd=tmp_path)
    assert rerun.returncode == 2 and "at least 20" in rerun.stderr
