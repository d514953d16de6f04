"""Fixtures for the CLI tests: ``python -m soniq`` as a real subprocess, or ``soniq`` in-process.

A real subprocess costs about a second of CPU here (a fresh interpreter imports the library), so
each command runs as one at least once, and its other variants (other options, mistakes, the same
command on the other backend) run in-process: what they test is the command's logic, which is
the same code reached through the same ``main(argv)``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

from soniq.cli import main
from tests.cli import cli as subprocess_cli


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    """A database URL of each kind: an empty migrated PostgreSQL database, or a new SQLite file."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("sqlite_url"))


class InProcess:
    """Runs ``soniq`` inside the test process: for the variants of a command whose real
    subprocess run is tested once per backend (a subprocess costs about a second here)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self._capsys = capsys
        self._monkeypatch = monkeypatch
        for key in list(os.environ):
            if key.startswith("SONIQ_"):
                monkeypatch.delenv(key)

    def __call__(self, *args: str, code: int = 0, **env: str) -> tuple[str, str]:
        """Run, expect exit ``code``; ``(stdout, stderr)``."""
        for key, value in env.items():
            self._monkeypatch.setenv(key, value)
        # The test app reads SONIQ_DATABASE_URL when imported: import it afresh for this run, as
        # a subprocess would (the command closes the app it loaded).
        self._monkeypatch.delitem(sys.modules, "tests.cli.jobs_app", raising=False)
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = self._capsys.readouterr()
        assert exit_info.value.code == code, f"exit {exit_info.value.code}\n{out}\n{err}"
        assert "Traceback" not in err
        return out, err

    def json(self, *args: str, **env: str) -> Any:
        return json.loads(self(*args, "--json", **env)[0])

    def fails(self, code: int, *args: str, **env: str) -> str:
        """Like :func:`tests.cli.cli.fails`: exit ``code`` with one line on stderr; that line."""
        out, err = self(*args, code=code, **env)
        assert "Traceback" not in out
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        return lines[0]


class Commands:
    """``ok`` / ``ok_json`` / ``fails`` on one database: as a real ``python -m soniq`` subprocess
    on SQLite, in-process on PostgreSQL (the same commands' process behaviour is then covered by
    the SQLite run, their PostgreSQL logic by the in-process one)."""

    def __init__(self, url: str, real: bool, cli: InProcess) -> None:
        self.url = url
        self.real = real
        self._cli = cli
        if not real:
            cli._monkeypatch.setenv("SONIQ_DATABASE_URL", url)

    def ok(self, *args: str) -> str:
        if self.real:
            return subprocess_cli.ok(*args, env=subprocess_cli.clean_env(SONIQ_DATABASE_URL=self.url))
        return self._cli(*args)[0]

    def ok_json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def run(self, *args: str) -> tuple[int, str, str]:
        """Any exit code: ``(code, stdout, stderr)``."""
        if self.real:
            done = subprocess_cli.soniq(*args,
                                        env=subprocess_cli.clean_env(SONIQ_DATABASE_URL=self.url))
            return done.returncode, done.stdout, done.stderr
        self._cli._monkeypatch.delitem(sys.modules, "tests.cli.jobs_app", raising=False)
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = self._cli._capsys.readouterr()
        return int(exit_info.value.code or 0), out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> InProcess:
    return InProcess(capsys, monkeypatch)


@pytest.fixture
def commands(url: str, cli: InProcess) -> Commands:
    """Commands on ``url``: real subprocesses on SQLite, in-process on PostgreSQL."""
    return Commands(url, real=not url.startswith("postgresql"), cli=cli)
