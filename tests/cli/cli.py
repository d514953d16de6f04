"""Running ``soniq`` as a subprocess, and looking into its database from the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from soniq import Soniq

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any SONIQ_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SONIQ_", "NO_COLOR"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def soniq(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "soniq", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env or clean_env())


def ok(*args: str, **kwargs: Any) -> str:
    """Run and expect exit 0; the stdout."""
    done = soniq(*args, **kwargs)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def ok_json(*args: str, **kwargs: Any) -> Any:
    return json.loads(ok(*args, "--json", **kwargs))


def fails(code: int, *args: str, **kwargs: Any) -> str:
    """Run and expect exit ``code`` with one clear line on stderr and no traceback; that line."""
    done = soniq(*args, **kwargs)
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def in_db(url: str, fn: Callable[[Soniq], Awaitable[T]], **settings: Any) -> T:
    """Run ``fn(app)`` against ``url`` in this process (on a fresh instance, closed after)."""

    async def main() -> T:
        async with Soniq(database_url=url, enqueue_validation="none", **settings) as app:
            return await fn(app)

    return anyio.run(main)
