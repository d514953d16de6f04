"""The README's quickstart and the examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The examples run as written, with one setting from the environment: a worker on SQLite (no
#: LISTEN) picks up a retried job at its next poll, by default 5 s later; 0.1 s keeps each example
#: seconds shorter and changes nothing it prints.
FAST_POLL = {"SONIQ_POLL_INTERVAL": "0.1"}


def run_python(code_or_path: str | Path, cwd: Path) -> str:
    args = [sys.executable, str(code_or_path)] if isinstance(code_or_path, Path) else \
        [sys.executable, "-c", code_or_path]
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **FAST_POLL})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_quickstart_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    out = run_python(code.group(1), tmp_path)
    assert out.strip() == "welcome sent to ada@example.com (attempt 1)"
    assert (tmp_path / "quickstart.db").exists()


def test_quickstart_example_runs(tmp_path: Path) -> None:
    out = run_python(ROOT / "examples" / "quickstart.py", tmp_path)
    assert "send_welcome" in out and "attempts=2" in out  # the flaky address was retried
    assert "'queue': 'emails', 'total': 2, 'waiting': 0, 'queued': 0, 'processing': 0, 'done': 2" in out
    assert "{'user_id': 7, 'size': 128}" in out


def test_readme_quickstart_is_the_tested_example() -> None:
    """The README's quickstart is examples/first_job.py below its docstring, not typed twice."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme.split("## Quickstart", 1)[1], re.S)
    assert block is not None
    example = (ROOT / "examples" / "first_job.py").read_text()
    body = example.split('"""', 2)[2].lstrip("\n")
    body = body.replace("from __future__ import annotations\n\n", "", 1)
    assert block.group(1) == body, "copy examples/first_job.py (without its docstring) into README"


def test_first_job_example_runs(tmp_path: Path) -> None:
    out = run_python(ROOT / "examples" / "first_job.py", tmp_path)
    assert out.strip() == "welcome sent to ada@example.com (attempt 1)"


def test_trio_example_runs(tmp_path: Path) -> None:
    out = run_python(ROOT / "examples" / "trio_app.py", tmp_path)
    assert "nursery: [0, 1, 4, 9, 16]" in out
    assert "async with: 144" in out


def test_cron_example_runs(tmp_path: Path) -> None:
    out = run_python(ROOT / "examples" / "cron_jobs.py", tmp_path)
    assert "heartbeat.ping every 1.0s active" in out
    assert "reports.daily 0 7 * * mon-fri active" in out
    assert "pings done: True" in out


def test_webhook_receiver_example_runs(tmp_path: Path) -> None:
    out = run_python(ROOT / "examples" / "webhook_receiver.py", tmp_path)
    assert "verified job.done True" in out
    assert "forged request answered 401" in out
    assert "['delivered']" in out


@pytest.mark.postgres
def test_transactional_enqueue_example_runs(tmp_path: Path, pg_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_DATABASE_URL", pg_url)
    out = run_python(ROOT / "examples" / "transactional_enqueue.py", tmp_path)
    assert "order 2 failed: payment declined" in out
    assert "jobs: [(1, 'done')]" in out  # the rolled-back order left no job behind
    assert "results: ['receipt for order 1']" in out


def test_every_example_is_run_by_a_test() -> None:
    """Each file or project in examples/ is named by some test (here or in tests/integrations)."""
    tests_text = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    examples = [p for p in (ROOT / "examples").iterdir()
                if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith(("_", "."))]
    missing = [p.name for p in examples if p.name not in tests_text and p.stem not in tests_text]
    assert not missing, f"examples no test runs: {missing}"
