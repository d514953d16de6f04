"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``, ``nox -s docs``."""

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


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ (strict: any warning fails). ``nox -s docs --
    serve`` previews it instead. The pages' code blocks are run by ``tests/test_docs.py``."""
    session.install("-e", ".[docs]")
    quiet = {"NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about its successor
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:], env=quiet)
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs, env=quiet)


#: Peers measured beside Soniq by ``nox -s bench`` (measuring sticks only: nothing of theirs goes
#: into src/). Pinned to the versions of perf-anchors.md, Part 2.
BENCH_PEERS = ("pgqueuer==1.6.0", "procrastinate==3.10.0", "psycopg[binary,pool]")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: ``nox -s bench`` (full, ~30 min) or ``nox -s bench -- --quick`` (< 2 min).

    Needs PostgreSQL on 127.0.0.1:5432 (SONIQ_BENCH_PG_URL to change). Results go to
    benchmarks/results/. A peer that cannot be installed is reported in the table, not fatal.
    """
    session.install("-e", ".[trio]", "py-spy")
    for peer in BENCH_PEERS:
        session.install(peer, success_codes=[0, 1])  # a failed peer is reported, not fatal
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(default=False)
def compare(session: nox.Session) -> None:
    """Is one commit faster than another? ``nox -s compare -- OLD_REV NEW_REV --pairs 3 --only
    process,latency [--quick] [--output]``: both checked out as git worktrees and run interleaved,
    after A/A pairs that show the noise (benchmarks/compare.py; ``-- --help`` for the options).
    """
    session.install("-e", ".[trio]")
    session.run("python", "-m", "benchmarks.compare", *session.posargs)


@nox.session(default=False)
def soak(session: nox.Session) -> None:
    """Opt-in soak run: ``nox -s soak`` (10 min at 100 jobs/s on one ``soniq worker``), or e.g.
    ``nox -s soak -- --minutes 1 --rate 50 --sample-every 10``; ``-- --help`` for the options.

    Reports the worker's memory, fds and connections and the jobs table's size at start and end,
    and fails when memory grows more than 10% after the warm-up (benchmarks/soak.py). Needs
    PostgreSQL on 127.0.0.1:5432 (SONIQ_BENCH_PG_URL to change); ``--output`` writes the summary
    to benchmarks/results/. Not in the default sessions, not run by CI.
    """
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks.soak", *session.posargs)
