"""Fixtures for the CLI tests: each runs ``python -m soniq`` as a real subprocess."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from soniq.cli import main


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
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = self._capsys.readouterr()
        assert exit_info.value.code == code, f"exit {exit_info.value.code}\n{out}\n{err}"
        assert "Traceback" not in err
        return out, err

    def json(self, *args: str, **env: str) -> Any:
        return json.loads(self(*args, "--json", **env)[0])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> InProcess:
    return InProcess(capsys, monkeypatch)
