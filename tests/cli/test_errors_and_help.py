"""One clear line and the right exit code for every kind of mistake; readable ``--help`` everywhere;
the global options."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import anyio
import pytest

from soniq import Soniq
from soniq.cli import main
from tests.cli.cli import ROOT, clean_env, fails, ok, ok_json, soniq
from tests.cli.conftest import InProcess
from tests.helpers import wait_for

COMMANDS = [
    ["setup"], ["worker"], ["scheduler"], ["status"], ["inspect"], ["jobs"], ["jobs", "list"],
    ["jobs", "show"], ["jobs", "cancel"], ["jobs", "delete"], ["jobs", "retry"],
    ["dead-letter"], ["dead-letter", "list"], ["dead-letter", "replay"],
    ["dead-letter", "delete"], ["dead-letter", "purge"], ["dead-letter", "export"],
    ["schedules"], ["schedules", "list"], ["schedules", "pause"], ["schedules", "resume"],
    ["schedules", "remove"], ["enqueue"], ["migrate-status"], ["migrations"],
    ["migrations", "sql"], ["doctor"], ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_of_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"Usage: soniq {' '.join(command)}" in text
    if len(command) == 2 or command[0] not in ("jobs", "dead-letter", "schedules", "migrations"):
        # Every command lists the global options with their env vars.
        assert "SONIQ_APP" in text and "SONIQ_LOOP" in text and "SONIQ_LOG_FORMAT" in text
    if command[-1] not in ("sql", "demo", "jobs", "dead-letter", "schedules", "migrations"):
        assert "SONIQ_DATABASE_URL" in text


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in ("setup", "worker", "scheduler", "status", "inspect", "jobs", "dead-letter",
                 "schedules", "enqueue", "migrate-status", "migrations", "doctor", "demo"):
        assert f"\n│ {name} " in text, name
    assert "Exit codes" in text and "--database-url" in text


def test_mistakes_are_one_line_with_the_right_exit_code(cli: InProcess) -> None:
    # Real processes for a usage error (2), a runtime failure (1) and cyclopts' own error; the
    # other mistakes in-process (the same one-line, no-traceback and exit-code checks).
    assert "cannot tell the storage backend" in fails(
        2, "jobs", "list", "--database-url", "mysql://root:hunter2@db/x")
    unreachable = fails(1, "status", "--database-url", "postgresql://u:hunter2@127.0.0.1:1/x")
    assert "cannot connect" in unreachable and "hunter2" not in unreachable
    assert "cannot import module 'no.such.module'" in cli.fails(2, "status", "no.such.module:app")
    assert "not a Soniq instance" in cli.fails(2, "--app", "tests.cli.jobs_app:add", "jobs",
                                               "list")
    typo = soniq("jbos")
    assert typo.returncode == 2 and 'Did you mean "jobs"' in typo.stdout + typo.stderr
    assert "looks like a database URL" in cli("status", "postgresql://u:hunter2@h/db", code=2)[1]
    assert 'Did you mean "list"' in "".join(cli("dead-letter", "lst", code=2))
    assert "Did you mean --limit" in "".join(cli("jobs", "list", "--limt", "3", code=2))


@pytest.mark.postgres
def test_missing_schema_names_soniq_setup(fresh_database: tuple[str, str]) -> None:
    url = fresh_database[1].replace("postgres@", "postgres:hunter2@", 1)
    line = fails(1, "jobs", "list", "--database-url", url)
    assert "soniq setup" in line and "hunter2" not in line
    assert ok("setup", "--database-url", url).startswith("Applied")
    assert ok_json("--database-url", url, "jobs", "list") == []


def test_global_options(sqlite_url: str, cli: InProcess) -> None:
    job_id = ok("--database-url", sqlite_url, "--app", "tests.cli.jobs_app:app", "--loop", "trio",
                "enqueue", "tests.cli.jobs_app:add", "--args", '{"a": 2, "b": 3}').strip()
    done = soniq("--log-format", "json", "worker", "tests.cli.jobs_app:app", "--run-once",
                 env=clean_env(SONIQ_DATABASE_URL=sqlite_url))
    assert done.returncode == 0, done.stderr
    logs = [json.loads(line) for line in done.stderr.splitlines()]
    assert logs and {"time", "level", "logger", "message"} <= set(logs[0])
    # Global options from the environment (read the same way in-process).
    [job] = cli.json("jobs", "list", SONIQ_DATABASE_URL=sqlite_url, SONIQ_LOOP="trio")
    assert (job["id"], job["status"], job["result"]) == (job_id, "done", 5)
    assert soniq("--version").stdout.strip()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_scheduler_fires_schedules_and_stops_on_sigterm(url: str) -> None:
    async with Soniq(database_url=url, enqueue_validation="none") as app:
        await app.scheduler.add("every-second", every=1, target="cli.add", args={"a": 1, "b": 2})
        env = clean_env(SONIQ_DATABASE_URL=url, SONIQ_SCHEDULER_INTERVAL="0.1")
        proc = subprocess.Popen(  # noqa: ASYNC220 -- starting a process does not block
            [sys.executable, "-m", "soniq", "scheduler", "tests.cli.jobs_app:app"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            jobs = await wait_for(lambda: app.list_jobs(), timeout=30, interval=0.1,
                                  message="a job fired by the scheduler process")
            assert (jobs[0]["job_name"], jobs[0]["args"]) == ("cli.add", {"a": 1, "b": 2})
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                code = await anyio.to_thread.run_sync(proc.wait)
        finally:
            if proc.poll() is None:
                proc.kill()
            _, stderr = proc.communicate()
        assert code == 0, stderr
        assert "soniq scheduler" in stderr and "stopped (SIGTERM)" in stderr


def _on_a_terminal(*args: str, **env: str) -> str:
    """Run with stdout on a pseudo-terminal (as a person sees it); what was written."""
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "soniq", *args], stdout=follower,
                              stderr=subprocess.PIPE, cwd=ROOT, timeout=60,
                              env=clean_env(TERM="xterm-256color", COLUMNS="160", **env))
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert done.returncode == 0, done.stderr
    return b"".join(chunks).decode()


def test_rich_tables_on_a_terminal_plain_when_piped_and_no_color(sqlite_url: str,
                                                                 cli: InProcess) -> None:
    colour = re.compile(r"\x1b\[(?:\d+;)*3\d")
    rich = _on_a_terminal("doctor", "--database-url", sqlite_url)
    assert "┃" in rich and "│" in rich and colour.search(rich)
    plain = _on_a_terminal("doctor", "--database-url", sqlite_url, NO_COLOR="1")
    assert "┃" in plain and not colour.search(plain)
    piped = cli("doctor", "--database-url", sqlite_url)[0]  # captured: not a terminal either
    assert "│" not in piped and "\x1b[" not in piped and piped.startswith("result ")


def test_enqueue_with_deeply_nested_args_is_one_line_not_a_traceback(tmp_path: object) -> None:
    deep = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    line = fails(2, "enqueue", "tests.any", "--args", deep, "--database-url",
                 f"{tmp_path}/jobs.db")
    assert "--args is nested too deeply" in line
