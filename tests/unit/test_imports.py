"""What a process loads: ``import soniq``, a worker that sends no webhooks and serves no dashboard,
and ``soniq --help`` leave the heavy optional parts (httpx, Litestar, uvicorn, ...) unloaded, so
that every process starts quickly (issue #18). Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import soniq
from soniq._version import __version__

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("httpx", "litestar", "uvicorn", "jinja2", "rich", "croniter", "cryptography")


def _run(code: str, cwd: Path = ROOT) -> Any:
    """Run ``code`` in a fresh interpreter; it prints one JSON document last, which is returned."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**_env(), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}


LIBRARY = """
import json, sys
HEAVY = %r
seen = {}
import soniq
seen["import soniq"] = sorted(m for m in HEAVY + ("pydantic_settings",) if m in sys.modules)
from soniq import JobContext, Soniq, SoniqSettings, Worker
seen["from soniq import Soniq"] = sorted(m for m in HEAVY if m in sys.modules)
import anyio
app = Soniq(database_url=sys.argv[1] if len(sys.argv) > 1 else %r)

@app.job(name="add")
async def add(a: int, b: int) -> int:
    return a + b

async def main() -> object:
    async with app:
        job = await app.enqueue("add", a=1, b=2)
        await app.scheduler.add("every-minute", every=60, target="add", args={"a": 0, "b": 0})
        await app.run_worker(run_once=True)
        return (await app.get_job(job))["result"]

seen["result"] = anyio.run(main)
seen["after a worker run"] = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps(seen))
"""


def test_import_soniq_and_a_worker_without_webhooks_load_none_of_the_heavy_parts(tmp_path: Path) -> None:
    seen = _run(LIBRARY % (HEAVY, str(tmp_path / "jobs.db")), cwd=tmp_path)
    assert seen["import soniq"] == []  # not even pydantic-settings: the names load on first use
    assert seen["from soniq import Soniq"] == []
    assert seen["result"] == 3  # the worker really ran the job
    assert seen["after a worker run"] == []


CLI = """
import contextlib, io, json, sys
from soniq.cli import main

def run(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), sorted(m for m in %r if m in sys.modules)

seen = {"help": run("--help"), "worker help": run("worker", "--help")}
seen["worker"] = run("worker", "tests.cli.jobs_app:app", "--run-once", "--database-url", %r)
print(json.dumps(seen))
"""


def test_soniq_help_loads_neither_settings_nor_web_parts(tmp_path: Path) -> None:
    seen = _run(CLI % ((*HEAVY, "pydantic_settings"), str(tmp_path / "jobs.db")))
    code, text, loaded = seen["help"]
    assert code == 0
    for name in ("setup", "worker", "scheduler", "status", "inspect", "jobs", "dead-letter",
                 "schedules", "enqueue", "migrate-status", "migrations", "doctor", "demo"):
        assert f" {name} " in text, name  # every command is listed with its help
    assert "Exit codes" in text and "--database-url" in text
    assert set(loaded) <= {"rich"}  # cyclopts renders help with rich
    code, text, loaded = seen["worker help"]
    assert code == 0
    for option in ("--queues", "--concurrency", "--run-once", "--loop", "SONIQ_APP", "130", "143"):
        assert option in text, option
    assert set(loaded) <= {"rich"}
    code, _, loaded = seen["worker"]
    assert code == 0
    # It did load the app and its settings, and nothing for webhooks, cron, keys or the web
    # (rich is there since the help above; a plain worker without it: the test above).
    assert set(loaded) - {"rich"} == {"pydantic_settings"}


def test_the_package_namespace() -> None:
    assert set(soniq.__all__) <= set(dir(soniq))
    for name in soniq.__all__:
        assert getattr(soniq, name) is not None
    assert soniq.Soniq.__module__ == "soniq.app"
    with pytest.raises(AttributeError, match="no attribute 'Sonic'"):
        soniq.Sonic  # type: ignore[attr-defined]  # noqa: B018
    namespace: dict[str, object] = {}
    exec("from soniq import *", namespace)
    assert set(soniq.__all__) <= set(namespace)


def test_version_is_written_once_and_installed_as_such() -> None:
    from importlib.metadata import version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/soniq/_version.py"
    assert soniq.__version__ == __version__ == version("soniq")
