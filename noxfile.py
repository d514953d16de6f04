"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite (PostgreSQL on SONIQ_TEST_PG_URL or 127.0.0.1:5432)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and the import-layer contract from DESIGN.md §2."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "src", "tests", "examples", "noxfile.py")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install("-e", ".[lint]")
    session.run("mypy", "--strict", "src")
