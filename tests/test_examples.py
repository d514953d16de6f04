"""The README's quickstart and the examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code_or_path: str | Path, cwd: Path) -> str:
    args = [sys.executable, str(code_or_path)] if isinstance(code_or_path, Path) else \
        [sys.executable, "-c", code_or_path]
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
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
    assert "'queue': 'emails', 'total': 2, 'queued': 0, 'processing': 0, 'done': 2" in out
    assert "{'user_id': 7, 'size': 128}" in out
