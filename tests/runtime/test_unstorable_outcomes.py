"""Outcomes the database cannot store block nothing else (issue #26, finding 1).

A result over ``max_result_bytes`` fails its attempt before anything is sent; a result or error
text the database refuses (here: characters a LATIN1 PostgreSQL database cannot represent, or a
SQLite trigger's veto) is split off its batch: a refused result becomes a failed attempt
("result could not be stored: ..."), retried or dead-lettered like any failure; a refused error
text is stored escaped to ASCII. Every other outcome of the worker is written. On memory, SQLite
and PostgreSQL, under asyncio and trio.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest

from soniq import Soniq
from tests.helpers import on_connection, wait_for_status

pytestmark = pytest.mark.anyio

FAST = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "heartbeat_timeout": 2.0}


def register_jobs(app: Soniq) -> None:
    @app.job(name="fine")
    async def fine(n: int) -> str:
        return f"fine {n}"

    @app.job(name="huge", retries=1, retry_delay=0)
    async def huge() -> str:
        return "x" * 5000

    @app.job(name="long_error", retries=0)
    async def long_error() -> None:
        raise ValueError("é" * 5000)

    @app.job(name="emoji", retries=1, retry_delay=0)
    async def emoji() -> str:
        return "done ✅"

    @app.job(name="foreign_error", retries=0)
    async def foreign_error() -> None:
        raise ValueError("エラー")


async def run_beside_fine_jobs(app: Soniq, *names: str) -> tuple[list[dict[str, Any]],
                                                                 list[dict[str, Any]]]:
    """Run jobs ``names`` among ordinary ones (before and after them); the records of both,
    once every ordinary job is ``done`` and every named one ``dead_letter``."""
    async with app.running_worker(concurrency=4):
        before = [await app.enqueue("fine", n=n) for n in range(8)]
        named = [await app.enqueue(name) for name in names]
        after = [await app.enqueue("fine", n=n) for n in range(8, 16)]
        fine = [await wait_for_status(app, job_id, "done") for job_id in before + after]
        failed = [await wait_for_status(app, job_id, "dead_letter") for job_id in named]
    assert [record["result"] for record in fine] == [f"fine {n}" for n in range(16)]
    return failed, fine


@pytest.fixture
async def capped(backend_name: str, database_url: str | None) -> AsyncIterator[Soniq]:
    soniq = Soniq(database_url=database_url, backend=backend_name if database_url is None else None,
                  max_result_bytes=1024, max_error_bytes=1024, **FAST)
    register_jobs(soniq)
    try:
        yield soniq
    finally:
        await soniq.close()


async def test_a_result_over_the_cap_is_a_failed_attempt_and_long_errors_are_cut(
        capped: Soniq) -> None:
    [huge, long_error], _ = await run_beside_fine_jobs(capped, "huge", "long_error")
    assert huge["attempts"] == 2 and len(huge["errors"]) == 2  # retried, then dead-lettered
    for error in huge["errors"]:
        assert error["type"] == "SerializationError"
        assert error["message"].startswith("result could not be stored: its JSON takes more "
                                           "than max_result_bytes (1,024 bytes)")
    assert huge["result"] is None
    [error] = long_error["errors"]
    assert error["message"].startswith("é" * 100) and error["message"].endswith("é" * 100)
    assert " bytes cut ...] " in error["message"]
    assert len(error["message"].encode()) <= 1024


async def test_a_result_sqlite_refuses_is_a_failed_attempt(sqlite_url: str) -> None:
    app = Soniq(database_url=sqlite_url, **FAST)
    register_jobs(app)
    try:
        await app.setup()
        with sqlite3.connect(sqlite_url) as conn:  # a veto the database keeps making
            conn.execute("CREATE TRIGGER refuse_emoji BEFORE UPDATE OF result ON soniq_jobs "
                         "WHEN NEW.result LIKE '%✅%' BEGIN SELECT RAISE(ABORT, 'no emoji'); END")
        conn.close()
        [emoji], _ = await run_beside_fine_jobs(app, "emoji")
    finally:
        await app.close()
    assert emoji["attempts"] == 2 and emoji["result"] is None
    for error in emoji["errors"]:
        assert error["type"] == "ResultNotStored"
        assert error["message"].startswith("result could not be stored: SQLite refused a value")
        assert "no emoji" in error["message"]


@pytest.fixture
async def latin1_url(pg_server: str, fresh_database: tuple[str, str]) -> str:
    """A database in LATIN1 (dropped after the test by ``fresh_database``), not yet migrated."""
    name, url = fresh_database

    async def create(conn: Any) -> None:
        await conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' "
                           "LC_CTYPE 'C' TEMPLATE template0")

    await on_connection(pg_server, create)
    return url


@pytest.mark.postgres
async def test_outcomes_a_latin1_database_cannot_hold_block_nothing(latin1_url: str) -> None:
    app = Soniq(database_url=latin1_url, **FAST)
    register_jobs(app)
    try:
        await app.setup()
        [emoji, foreign_error], _ = await run_beside_fine_jobs(app, "emoji", "foreign_error")
    finally:
        await app.close()
    # The result it cannot hold: a failed attempt, retried once, then dead-lettered.
    assert emoji["attempts"] == 2 and emoji["result"] is None
    for error in emoji["errors"]:
        assert error["type"] == "ResultNotStored"
        assert error["message"].startswith("result could not be stored: PostgreSQL refused a "
                                           "value at ")
        assert 'has no equivalent in encoding "LATIN1"' in error["message"]
    # The error text it cannot hold: stored escaped, and readable back.
    [error] = foreign_error["errors"]
    assert (error["type"], error["message"]) == ("ValueError", "\\u30a8\\u30e9\\u30fc")
    assert error["message"].encode().decode("unicode_escape") == "エラー"
    assert foreign_error["last_error"] == "ValueError: \\u30a8\\u30e9\\u30fc"
    assert "ValueError: \\u30a8\\u30e9\\u30fc" in error["traceback"]
