"""The dedup keys table (``soniq_unique_keys``): the migrations that move today's keys into it
(PostgreSQL 0017, SQLite 0012) on databases in use, and 50 concurrent unique enqueues from five
processes making one row on PostgreSQL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from soniq import Soniq
from soniq.backends.sqlite import SqliteBackend
from soniq.backends.sqlite.sql import to_db
from soniq.ids import new_id
from soniq.migrations import load_migrations
from soniq.serialization import utc_now
from tests.backends.test_postgres import (
    QUEUED_ROW,
    RUNNING_ROW,
    backend_for,
    fetch,
    labels_from,
    migrate_to,
    schema_of,
)
from tests.backends.test_sqlite import _at_version, _job_indexes
from tests.helpers import on_connection

pytestmark = pytest.mark.anyio

#: A queued job holding a dedup key, as versions 1-16 store it.
KEYED_ROW = ("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, max_attempts,"
             " dedup_key) VALUES ($1::uuid, 'ok', 'default', 100, 'queued', '{}', 3, $2)")


@pytest.mark.postgres
async def test_the_keys_migration_moves_the_held_keys_on_postgres(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """Migration 17 on a database at version 16 with a queued job holding a key, a running job
    and a plain queued one: the key moves to soniq_unique_keys and still blocks; the schema is
    a fresh database's; the old unique index and CHECK are gone."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    held, running, plain = new_id(), new_id(), new_id()

    async def at_version_16(conn: Any) -> None:
        await migrate_to(conn, 16)
        await conn.execute(KEYED_ROW, held, "k1")
        await conn.execute(RUNNING_ROW, running, new_id())
        await conn.execute(QUEUED_ROW, plain)

    await on_connection(url, at_version_16)
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(17)
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)
    keys = await fetch(url, "SELECT key, job_id::text, expires_at FROM soniq_unique_keys")
    assert [tuple(row) for row in keys] == [("k1", held, None)]
    async with Soniq(database_url=url, pool_min_size=1, enqueue_validation="none") as app:
        assert await app.enqueue("ok", dedup_key="k1") == held
        await app.backend.claim_jobs(new_id(), None, 10)  # takes held (and plain)
        fresh = await app.enqueue("ok", dedup_key="k1")
        assert fresh not in (held, running, plain)
        assert len(await app.list_jobs(limit=10)) == 4


async def test_the_keys_migration_rebuilds_the_jobs_table_on_sqlite(tmp_path: Path) -> None:
    """Migration 12 rebuilds ``soniq_jobs`` (a CHECK cannot be dropped on SQLite) on a file at
    version 11 with a keyed queued job (a log on it) and a running one: every row and index
    but the dedup key's survives, the key moves and still blocks."""
    path = str(tmp_path / "soniq.db")
    _at_version(path, 11)
    before = _job_indexes(path)
    stamp = to_db(utc_now())
    held, running = new_id(), new_id()
    with sqlite3.connect(path) as conn:
        insert = ("INSERT INTO soniq_jobs (id, job_name, queue, status, args, attempts,"
                  " max_attempts, scheduled_at, created_at, updated_at, dedup_key)"
                  " VALUES (?, 'ok', 'default', ?, '{}', ?, 3, ?, ?, ?, ?)")
        conn.execute(insert, (held, "queued", 0, stamp, stamp, stamp, "k1"))
        conn.execute(insert, (running, "processing", 1, stamp, stamp, stamp, None))
        conn.execute("INSERT INTO soniq_job_logs (job_id, job_name, queue, attempt, level, "
                     "levelno, logger, message, created_at) VALUES "
                     "(?, 'ok', 'default', 1, 'INFO', 20, 'x', 'kept', ?)", (held, stamp))
    conn.close()
    backend = SqliteBackend(path)
    try:
        assert await backend.migrate() == [m.label for m in load_migrations("sqlite")
                                           if m.version >= 12]
        before.pop("soniq_jobs_dedup_key")
        assert _job_indexes(path) == before
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT message FROM soniq_job_logs").fetchall() == [("kept",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            assert conn.execute("SELECT key, job_id, expires_at FROM soniq_unique_keys"
                                ).fetchall() == [("k1", held, None)]
            table = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'soniq_jobs'"
                                 ).fetchone()[0]
            assert "dedup_key IS NULL OR" not in table
        conn.close()
    finally:
        await backend.close()
    async with Soniq(database_url=path, enqueue_validation="none") as app:
        assert await app.enqueue("ok", dedup_key="k1") == held
        record = await app.get_job(running)
        assert record is not None and record["status"] == "processing"


_PRODUCER = """
import asyncio, pathlib, sys, time
from soniq import EnqueueOptions, Soniq

async def main(url, ready, go):
    app = Soniq(database_url=url, pool_min_size=10, pool_max_size=10)

    @app.job(name="sync_user")
    async def sync_user(user_id: int, n: int = 0) -> None: ...

    await app.ensure_initialized()
    pathlib.Path(ready).touch()
    deadline = time.monotonic() + 60
    while not pathlib.Path(go).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    options = EnqueueOptions(unique_by=["user_id"], unique_while=("queued", "processing"))
    ids = await asyncio.gather(*[
        app.enqueue("sync_user", user_id=1, n=n, scheduled_at=3600, options=options)
        for n in range(10)])
    print(" ".join(sorted(set(ids))))
    await app.close()

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the processes choose their own loop
async def test_fifty_concurrent_unique_enqueues_from_five_processes_make_one_row(
        pg_url: str, tmp_path: Path, anyio_backend: str) -> None:
    go = anyio.Path(tmp_path / "go")
    answers: list[str] = []

    async def producer(index: int) -> None:
        result = await anyio.run_process(
            [sys.executable, "-c", _PRODUCER, pg_url, str(tmp_path / f"ready{index}"), str(go)],
            stderr=subprocess.STDOUT, check=False)
        assert result.returncode == 0, result.stdout.decode()[-2000:]
        answers.append(result.stdout.decode().strip())

    async def release() -> None:
        with anyio.fail_after(60):
            while len([p async for p in anyio.Path(tmp_path).glob("ready*")]) < 5:
                await anyio.sleep(0.01)
        await go.touch()  # all five connected: they enqueue at once

    async with anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(producer, index)
        tg.start_soon(release)
    assert len(answers) == 5 and len(set(answers)) == 1 and " " not in answers[0]
    rows = await fetch(pg_url, "SELECT id::text FROM soniq_jobs")
    assert [row["id"] for row in rows] == [answers[0]]
    keys = await fetch(pg_url, "SELECT job_id::text FROM soniq_unique_keys")
    assert [row["job_id"] for row in keys] == [answers[0]]

