"""``soniq queues list|pause|resume|limit|rate`` on SQLite (a real subprocess for the pause, the
listing and a refusal) and PostgreSQL (in-process): output, exit codes, ``--json``, the stored
settings and the audit rows naming the CLI."""

from __future__ import annotations

import getpass
import socket

import pytest

from soniq import Soniq
from tests.cli.cli import clean_env, fails, in_db
from tests.cli.conftest import Commands, InProcess


def test_pause_list_resume_and_limits(url: str, cli: InProcess, commands: Commands) -> None:
    assert commands.ok("queues", "list").strip() == "no queues"
    assert commands.ok("queues", "pause", "mail").strip() == "paused queue mail"
    assert cli("--database-url", url, "queues", "pause", "mail")[0].strip() == (
        "already paused: queue mail")
    assert cli.json("--database-url", url, "queues", "resume", "mail") == {
        "name": "mail", "paused": False, "changed": True}
    assert cli("--database-url", url, "queues", "resume", "mail")[0].strip() == (
        "not paused: queue mail")
    assert cli("--database-url", url, "queues", "pause", "reports")[0].strip() == (
        "paused queue reports")
    assert cli("--database-url", url, "queues", "limit", "mail", "5")[0].strip() == (
        "set concurrency limit 5 on queue mail")
    assert cli.json("--database-url", url, "queues", "rate", "mail", "20/s") == {
        "name": "mail", "rate_limit": "20/s", "changed": True}
    assert cli.json("--database-url", url, "queues", "rate", "mail", "20/s")["changed"] is False

    listed = commands.ok_json("queues", "list")
    assert [(q["name"], q["paused"], q["concurrency_limit"], q["rate_limit"], q["queued"])
            for q in listed] == [("mail", False, 5, "20/s", 0), ("reports", True, None, None, 0)]
    table = cli("--database-url", url, "queues", "list")[0].splitlines()
    assert table[0].split()[:2] == ["queue", "state"]
    assert table[1].split()[:4] == ["mail", "active", "5", "20/s"]
    assert table[2].split()[:2] == ["reports", "paused"]

    assert cli("--database-url", url, "queues", "limit", "mail", "--none")[0].strip() == (
        "cleared the concurrency limit of queue mail")
    assert cli("--database-url", url, "queues", "limit", "mail", "off")[0].strip() == (
        "no concurrency limit on queue mail")
    assert cli("--database-url", url, "queues", "rate", "mail", "off")[0].strip() == (
        "cleared the rate limit of queue mail")

    async def audit(app: Soniq) -> list[tuple[str, str, str]]:
        assert app.backend.audit is not None
        return [(e.actor, e.action, e.outcome) for e in await app.backend.audit.list(20)]

    entries = in_db(url, audit)
    assert len(entries) == 11
    assert {actor for actor, _, _ in entries} == {
        f"cli:{getpass.getuser()}@{socket.gethostname()}"}
    assert entries[-1][1:] == ("queue.pause", "ok") and entries[-2][1:] == (
        "queue.pause", "not_applied")


@pytest.mark.parametrize(("args", "says"), [
    (("limit", "mail", "0"), "concurrency limit must be an integer >= 1 or None, got 0"),
    (("limit", "mail", "-3"), "got -3"),
    (("limit", "mail", "many"), "N must be an integer >= 1 or off, got 'many'"),
    (("limit", "mail"), "give N (e.g. limit emails 5), or --none (or off) to clear it"),
    (("limit", "mail", "4", "--none"), "give N or --none, not both"),
    (("rate", "mail", "20/d"), "got '20/d'"),
    (("rate", "mail"), "give RATE (e.g. rate emails 20/s)"),
    (("pause", "no/slash"), "invalid queue name 'no/slash'"),
])
def test_bad_input_is_a_usage_error_and_writes_nothing(url: str, cli: InProcess,
                                                        args: tuple[str, ...], says: str) -> None:
    assert says in cli.fails(2, "--database-url", url, "queues", *args)
    assert cli.json("--database-url", url, "queues", "list") == []


def test_a_refusal_as_a_real_subprocess(sqlite_url: str) -> None:
    line = fails(2, "queues", "rate", "mail", "fast",
                 env=clean_env(SONIQ_DATABASE_URL=sqlite_url))
    assert "rate limit must look like 20/s" in line
