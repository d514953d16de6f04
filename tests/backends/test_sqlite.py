"""What only the SQLite adapter promises: an embedded schema created on first use, a file that
outlives the process, claims that stay exclusive across connections and processes, clear errors,
and timestamps that survive the round trip. Shared semantics live in ``test_conformance.py``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from soniq import Soniq
from soniq.backends.sqlite import SqliteBackend
from soniq.backends.sqlite import database as database_module
from soniq.backends.sqlite.sql import from_db, split_statements, to_db
from soniq.errors import DatabaseError, MigrationError, UnsupportedOperationError
from soniq.ids import new_id
from soniq.limits import Rate, RateGate
from soniq.migrations import MIGRATIONS_TABLE, Migration, load_migrations, migration_script
from soniq.serialization import dumps, utc_now
from soniq.testing import drain
from soniq.types import JobOutcome, JobStatus, NewJob, WorkerInfo

pytestmark = pytest.mark.anyio

WORKER = "00000000-0000-7000-8000-0000000000b1"
LEASE = "00000000-0000-4000-8000-0000000000b2"


def job(*, queue: str = "default", priority: int = 100, at: datetime | None = None,
        dedup_key: str | None = None, **args: object) -> NewJob:
    return NewJob(id=new_id(), job_name="tests.job", queue=queue, priority=priority,
                  args=dumps(args), max_attempts=3, scheduled_at=at, dedup_key=dedup_key)


@pytest.fixture
async def sqlite(sqlite_url: str) -> AsyncIterator[SqliteBackend]:
    backend = SqliteBackend(sqlite_url)
    try:
        yield backend
    finally:
        await backend.close()


def schema_of(path: str) -> dict[str, set[str]]:
    """Tables and indexes in the file, read with the standard library (not the adapter)."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    conn.close()
    found: dict[str, set[str]] = {"table": set(), "index": set()}
    for kind, name in rows:
        found.setdefault(kind, set()).add(name)
    return found


# -- schema ---------------------------------------------------------------------------------------
async def test_schema_is_created_on_first_use(sqlite: SqliteBackend, sqlite_url: str) -> None:
    assert not await anyio.Path(sqlite_url).exists()  # construction does no I/O
    new = job()
    assert await sqlite.insert_jobs([new]) == [new.id]  # no initialize(), no setup step
    schema = schema_of(sqlite_url)
    assert schema["table"] == {
        "soniq_jobs", "soniq_workers", "soniq_maintenance", "soniq_migrations",
        "soniq_schedules", "soniq_schedule_fires", "soniq_job_logs", "soniq_webhook_endpoints",
        "soniq_webhook_deliveries", "soniq_stats_minute", "soniq_job_definitions",
        "soniq_slots", "soniq_queues", "soniq_audit", "soniq_rate_buckets",
        "soniq_dependencies", "soniq_workflows", "soniq_unique_keys", "soniq_steps"}
    assert "soniq_jobs_dedup_key" not in schema["index"]  # keys live in soniq_unique_keys
    assert {
        "soniq_jobs_claim", "soniq_jobs_queue_claim", "soniq_jobs_queue_status",
        "soniq_jobs_expires_at", "soniq_jobs_worker_id",
        "soniq_jobs_dead_letter", "soniq_webhook_deliveries_due",
        "soniq_webhook_deliveries_finished",
        "soniq_job_logs_job", "soniq_job_logs_created_at", "soniq_jobs_parked",
        "soniq_jobs_slot_holders", "soniq_jobs_rated", "soniq_jobs_workflow",
        "soniq_jobs_cancelled", "soniq_dependencies_dependent",
    } <= schema["index"]
    with sqlite3.connect(sqlite_url) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version, name, applied_at = conn.execute(
            "SELECT version, name, applied_at FROM soniq_migrations ORDER BY version").fetchone()
        worker_columns = {row[1] for row in conn.execute("PRAGMA table_info(soniq_workers)")}
        schedule_columns = {row[1] for row in conn.execute("PRAGMA table_info(soniq_schedules)")}
        fire_indexes = list(conn.execute("PRAGMA index_list(soniq_schedule_fires)"))
    conn.close()
    assert (version, name) == (1, "initial")
    assert schedule_columns == {
        "name", "job_name", "cron", "every_seconds", "timezone", "queue", "priority", "args",
        "paused", "next_run_at", "last_run_at", "created_at", "updated_at"}
    assert [unique for _, _, unique, *_ in fire_indexes] == [1]  # UNIQUE (schedule_name, fire_at)
    assert abs(from_db(applied_at) - datetime.now(UTC)) < timedelta(minutes=1)
    assert worker_columns == {"id", "hostname", "pid", "queues", "concurrency", "started_at",
                              "last_heartbeat", "metadata", "job_names"}


async def test_migrate_reports_what_it_applied(sqlite_url: str) -> None:
    first = SqliteBackend(sqlite_url)
    try:
        assert await first.migrate() == [m.label for m in load_migrations("sqlite")]
        assert await first.migrate() == []
        await first.initialize()
        await first.initialize()  # idempotent
    finally:
        await first.close()
        await first.close()  # idempotent
    second = SqliteBackend(sqlite_url)
    try:
        await second.initialize()
        assert await second.migrate() == []
    finally:
        await second.close()


async def test_the_printed_script_builds_what_migrate_builds(sqlite_url: str,
                                                             tmp_path: Path) -> None:
    """``soniq migrations sql --backend sqlite`` applied by hand: the same schema and migration
    rows as the adapter's own migrations."""
    backend = SqliteBackend(sqlite_url)
    try:
        await backend.migrate()
    finally:
        await backend.close()
    by_hand = str(tmp_path / "by_hand.db")
    with sqlite3.connect(by_hand) as conn:
        conn.executescript(migration_script("sqlite"))
    conn.close()

    def contents(path: str) -> tuple[list[tuple[str, ...]], list[tuple[int, str]]]:
        with sqlite3.connect(path) as conn:
            schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                  "ORDER BY type, name").fetchall()
            applied = conn.execute("SELECT version, name FROM soniq_migrations "
                                   "ORDER BY version").fetchall()
        conn.close()
        return schema, applied

    assert contents(by_hand) == contents(sqlite_url)
    assert contents(by_hand)[1] == [(m.version, m.name) for m in load_migrations("sqlite")]


async def test_reopening_keeps_jobs(sqlite_url: str) -> None:
    first = SqliteBackend(sqlite_url)
    new = job(text="kept")
    try:
        await first.insert_jobs([new])
    finally:
        await first.close()
    second = SqliteBackend(sqlite_url)
    try:
        record = await second.get_job(new.id)
        assert record is not None and record["args"] == {"text": "kept"}
        assert record["status"] == "queued"
    finally:
        await second.close()


async def test_failed_migration_commits_nothing(sqlite_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Migration(99, "broken", "CREATE TABLE soniq_half (x INTEGER);\nSELECT * FROM nowhere;")
    monkeypatch.setattr(database_module, "load_migrations",
                        lambda kind: [*load_migrations(kind), broken])
    backend = SqliteBackend(sqlite_url)
    try:
        with pytest.raises(MigrationError, match="0099_broken") as caught:
            await backend.migrate()
        assert isinstance(caught.value.__cause__, sqlite3.Error)
    finally:
        await backend.close()
    schema = schema_of(sqlite_url)
    assert "soniq_jobs" in schema["table"] and "soniq_half" not in schema["table"]
    with sqlite3.connect(sqlite_url) as conn:
        applied = conn.execute("SELECT version FROM soniq_migrations ORDER BY version").fetchall()
    assert applied == [(m.version,) for m in load_migrations("sqlite")]  # all but the broken one
    conn.close()


async def test_a_newer_schema_is_refused(sqlite_url: str) -> None:
    backend = SqliteBackend(sqlite_url)
    try:
        await backend.migrate()
    finally:
        await backend.close()
    with sqlite3.connect(sqlite_url) as conn:
        conn.execute("INSERT INTO soniq_migrations VALUES (999, 'future', '2099-01-01')")
    conn.close()
    backend = SqliteBackend(sqlite_url)
    try:
        with pytest.raises(DatabaseError, match="schema version 999.*upgrade soniq"):
            await backend.initialize()
    finally:
        await backend.close()


def test_split_statements_respects_strings_comments_and_triggers() -> None:
    script = textwrap.dedent("""
        -- a comment; with a semicolon
        CREATE TABLE t (x TEXT DEFAULT 'a;b');  -- trailing; comment
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN
            UPDATE t SET x = 'c;d';
            DELETE FROM t WHERE x = ';';
        END;
        /* block; comment */
    """)
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[0].endswith("'a;b');") and statements[1].endswith("END;")
    for migration in load_migrations("sqlite"):
        assert all(sqlite3.complete_statement(s) for s in split_statements(migration.sql))


# -- errors and capabilities ---------------------------------------------------------------------
async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """...and the driver thread of the connection that failed to open has ended by then: left
    running, it would call back into an event loop that may be closed (under trio, the bridge's)."""
    path = tmp_path / "no" / "such" / "dir" / "jobs.db"
    backend = SqliteBackend(str(path))
    before = set(threading.enumerate())
    try:
        with pytest.raises(DatabaseError, match=r"directory .*dir'? does not exist"):
            await backend.initialize()
        assert not [thread for thread in set(threading.enumerate()) - before
                    if "_connection_worker_thread" in thread.name]
    finally:
        await backend.close()
    assert not await anyio.Path(path.parent).exists()  # not created behind the user's back


async def test_no_connections_to_lend(sqlite: SqliteBackend) -> None:
    assert (sqlite.name, sqlite.supports_listen, sqlite.supports_transactions) == (
        "sqlite", False, False)
    with pytest.raises(UnsupportedOperationError, match="PostgreSQL"):
        await sqlite.insert_jobs([job()], connection=object())
    manager = sqlite.acquire()  # raising is deferred to entry, like memory
    with pytest.raises(UnsupportedOperationError, match="PostgreSQL"):
        async with manager:
            pass


async def test_driver_errors_are_translated(sqlite: SqliteBackend) -> None:
    new = job()
    await sqlite.insert_jobs([new])
    with pytest.raises(DatabaseError, match="UNIQUE") as caught:
        await sqlite.insert_jobs([new])  # same primary key
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    # The failed transaction was rolled back: the connection is usable and nothing was added.
    assert len(await sqlite.list_jobs()) == 1
    assert len(await sqlite.insert_jobs([job()])) == 1
    assert len(await sqlite.list_jobs()) == 2


# -- values ------------------------------------------------------------------------------------------
async def test_datetimes_round_trip_as_aware_utc(sqlite: SqliteBackend) -> None:
    plus_five = timezone(timedelta(hours=5, minutes=30))
    at = datetime(2021, 3, 4, 5, 6, 7, 890123, tzinfo=plus_five)
    new = job(at=at)
    await sqlite.insert_jobs([new])
    record = await sqlite.get_job(new.id)
    assert record is not None
    assert record["scheduled_at"] == at
    assert record["scheduled_at"].tzinfo == UTC and record["scheduled_at"].microsecond == 890123
    claim_at = datetime(2022, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    [claimed] = await sqlite.claim_jobs(WORKER, None, 1, now=claim_at)
    assert claimed.scheduled_at == at and claimed.scheduled_at.tzinfo == UTC
    expires = datetime(2022, 1, 2, 23, 59, 59, 999999, tzinfo=UTC)
    done = JobOutcome(claimed.id, claimed.lease_id, JobStatus.DONE, result="1", expires_at=expires)
    assert await sqlite.complete_jobs([done], now=claim_at + timedelta(microseconds=1)) == [new.id]
    record = await sqlite.get_job(new.id)
    assert record is not None
    assert record["started_at"] == claim_at
    assert record["finished_at"] == claim_at + timedelta(microseconds=1)
    assert record["expires_at"] == expires
    for key in ("scheduled_at", "created_at", "updated_at", "started_at", "finished_at"):
        assert record[key] is not None and record[key].utcoffset() == timedelta(0), key


def test_timestamp_text_sorts_like_time() -> None:
    instants = [
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2000, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))),  # 1999-12-31T23:00Z
    ]
    texts = [to_db(at) for at in instants]
    assert {len(text) for text in texts} == {27}
    assert sorted(texts) == [to_db(at) for at in sorted(instants)]
    assert [from_db(text) for text in texts] == instants


async def test_leases_are_random_uuids(sqlite: SqliteBackend) -> None:
    await sqlite.insert_jobs([job(i=i) for i in range(50)])
    claimed = await sqlite.claim_jobs(WORKER, None, 50)
    leases = [uuid.UUID(c.lease_id) for c in claimed]
    assert len(set(leases)) == 50
    assert all(lease.version == 4 and str(lease) == c.lease_id
               for lease, c in zip(leases, claimed, strict=True))


async def test_in_memory_database(anyio_backend: str) -> None:
    backend = SqliteBackend(":memory:")
    try:
        new = job(dedup_key="k")
        assert await backend.insert_jobs([new, job(dedup_key="k")]) == [new.id, new.id]
        [claimed] = await backend.claim_jobs(WORKER, ["default"], 5)
        assert claimed.id == new.id
        assert (await backend.queue_stats())[0]["processing"] == 1
    finally:
        await backend.close()


# -- concurrency ---------------------------------------------------------------------------------
async def test_two_backends_on_one_file_never_double_claim(sqlite_url: str) -> None:
    first, second = SqliteBackend(sqlite_url), SqliteBackend(sqlite_url)
    try:
        await first.initialize()
        await second.initialize()
        jobs = [job(i=i, queue=("a", "b")[i % 2]) for i in range(240)]
        await first.insert_jobs(jobs)
        claims: list[str] = []

        async def claimer(backend: SqliteBackend, queues: list[str] | None) -> None:
            while batch := await backend.claim_jobs(WORKER, queues, 7):
                claims.extend(c.id for c in batch)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for backend in (first, second):
                    for queues in (None, ["a"], ["a", "b"]):
                        tg.start_soon(claimer, backend, queues)
        assert len(claims) == len(set(claims))
        assert set(claims) == {j.id for j in jobs}
        for backend in (first, second):
            [stats_a, stats_b] = await backend.queue_stats()
            assert stats_a["processing"] == stats_b["processing"] == 120
    finally:
        await first.close()
        await second.close()


async def test_two_backends_share_workers_cancels_and_maintenance(sqlite_url: str) -> None:
    first, second = SqliteBackend(sqlite_url), SqliteBackend(sqlite_url)
    try:
        new = job()
        await first.insert_jobs([new])
        await first.register_worker(WorkerInfo(WORKER, "host", 1, ("default",), 2))
        [claimed] = await first.claim_jobs(WORKER, ["default"], 1)
        assert [w["queues"] for w in await second.list_workers()] == [["default"]]
        assert await second.cancel_job(claimed.id) == "requested"  # it is running
        assert await first.heartbeat(WORKER) == [claimed.id]
        results: list[bool] = []

        async def contend(backend: SqliteBackend) -> None:
            results.append(await backend.claim_maintenance("cleanup", 60))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(contend, first)
                    tg.start_soon(contend, second)
        assert sorted(results) == [False] * 9 + [True]
    finally:
        await first.close()
        await second.close()


_CHILD = """
import json, sys, anyio
from soniq.backends.sqlite import SqliteBackend

async def main() -> None:
    backend = SqliteBackend(sys.argv[1])
    await backend.initialize()
    print("ready", flush=True)
    sys.stdin.readline()  # start together with the parent
    claimed = []
    while batch := await backend.claim_jobs("00000000-0000-7000-8000-0000000000c1", None, 3):
        claimed.extend(c.id for c in batch)
    await backend.close()
    print(json.dumps(claimed), flush=True)

anyio.run(main)
"""


async def test_two_processes_never_double_claim(sqlite: SqliteBackend, sqlite_url: str) -> None:
    jobs = [job(i=i) for i in range(600)]
    await sqlite.insert_jobs(jobs)
    mine: list[str] = []
    with anyio.fail_after(60):
        async with await anyio.open_process([sys.executable, "-c", _CHILD, sqlite_url],
                                            stderr=subprocess.STDOUT) as child:
            assert child.stdin is not None and child.stdout is not None
            output = b""
            async for chunk in child.stdout:
                output += chunk
                if b"ready\n" in output:
                    break
            assert output.startswith(b"ready"), output
            await child.stdin.send(b"go\n")
            while batch := await sqlite.claim_jobs(WORKER, None, 3):
                mine.extend(c.id for c in batch)
            async for chunk in child.stdout:
                output += chunk
            assert await child.wait() == 0, output
    theirs = json.loads(output.decode().split("ready\n", 1)[1])
    assert not set(mine) & set(theirs)
    assert sorted(mine + theirs) == sorted(j.id for j in jobs)


async def test_inserts_and_claims_interleave_on_one_backend(sqlite: SqliteBackend) -> None:
    inserted: list[str] = []
    claimed: list[str] = []
    finished = anyio.Event()

    async def producer(n: int) -> None:
        for i in range(20):
            inserted.extend(await sqlite.insert_jobs([job(n=n, i=i), job(n=n, i=-i)]))

    async def consumer() -> None:
        while True:
            batch = await sqlite.claim_jobs(WORKER, None, 5)
            claimed.extend(c.id for c in batch)
            accepted = await sqlite.complete_jobs(
                [JobOutcome(c.id, c.lease_id, JobStatus.DONE, result="null") for c in batch])
            assert accepted == [c.id for c in batch]
            if not batch and finished.is_set():
                return
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            tg.start_soon(consumer)
            async with anyio.create_task_group() as producers:
                for n in range(4):
                    producers.start_soon(producer, n)
            finished.set()
    assert len(inserted) == 160
    assert sorted(claimed) == sorted(inserted)
    [stats] = await sqlite.queue_stats()
    assert (stats["done"], stats["total"]) == (160, 160)


async def test_cancelled_call_leaves_no_transaction_open(sqlite_url: str) -> None:
    backend = SqliteBackend(sqlite_url, busy_timeout=0.3)
    blocker = None
    try:
        await backend.insert_jobs([job(i=i) for i in range(3)])
        # Another connection holds the write lock, so the claim waits inside BEGIN IMMEDIATE.
        blocker = sqlite3.connect(sqlite_url, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        with anyio.move_on_after(0.05) as scope:
            await backend.claim_jobs(WORKER, None, 10)
        assert scope.cancelled_caught
        blocker.execute("ROLLBACK")
        # Had the cancelled claim left its transaction open, this would fail or see stale rows.
        assert len(await backend.claim_jobs(WORKER, None, 10)) == 3
        assert [s["processing"] for s in await backend.queue_stats()] == [3]
    finally:
        if blocker is not None:
            blocker.close()
        await backend.close()


async def test_facade_uses_sqlite_urls(tmp_path: Path) -> None:
    app = Soniq(f"sqlite:///{tmp_path / 'facade.db'}")
    try:
        assert isinstance(app.backend, SqliteBackend)

        @app.job(name="echo")
        async def echo(text: str) -> str:
            return text

        job_id = await app.enqueue(echo, text="hi")
        record = await app.get_job(job_id)
        assert record is not None and record["args"] == {"text": "hi"}
        with pytest.raises(UnsupportedOperationError):
            await app.enqueue(echo, text="hi", connection=object())
    finally:
        await app.close()
    assert await anyio.Path(tmp_path / "facade.db").exists()


async def test_the_job_definitions_migration_upgrades_a_file_in_use(sqlite_url: str) -> None:
    """Migration 7 (``soniq_job_definitions``, ``soniq_workers.job_names``) on a file at version
    6 with a job and a worker row in it: both kept, the old worker lists no job names, and a
    worker then stores its definition."""
    older = [m for m in load_migrations("sqlite") if m.version < 7]
    with sqlite3.connect(sqlite_url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS soniq_migrations (version INTEGER PRIMARY KEY "
                     "NOT NULL, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        for migration in older:
            if conn.execute("SELECT 1 FROM soniq_migrations WHERE version = ?",
                            (migration.version,)).fetchone() is None:
                conn.executescript(migration.sql)
                conn.execute("INSERT INTO soniq_migrations VALUES (?, ?, '2024-01-01')",
                             (migration.version, migration.name))
        new = job(text="kept")
        conn.execute("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, "
                     "attempts, max_attempts, scheduled_at, created_at, updated_at, errors) "
                     "VALUES (?, 'ok', 'default', 100, 'queued', '{}', 0, 3, "
                     "'2024-01-01T00:00:00.000000Z', '2024-01-01T00:00:00.000000Z', "
                     "'2024-01-01T00:00:00.000000Z', '[]')", (new.id,))
        conn.execute("INSERT INTO soniq_workers (id, hostname, pid, concurrency, started_at, "
                     "last_heartbeat) VALUES (?, 'old-host', 7, 2, "
                     "'2024-01-01T00:00:00.000000Z', '2024-01-01T00:00:00.000000Z')", (WORKER,))
    conn.close()
    backend = SqliteBackend(sqlite_url)
    try:
        assert await backend.migrate() == [m.label for m in load_migrations("sqlite")
                                           if m.version >= 7]
        assert [(w["hostname"], w["job_names"]) for w in await backend.list_workers()] == [
            ("old-host", [])]
    finally:
        await backend.close()
    async with Soniq(database_url=sqlite_url) as app:
        @app.job(name="ok")
        async def ok() -> None:
            return None

        assert [r["id"] for r in await drain(app)] == [new.id]
        stored = await app.definitions.get("ok")
        assert stored is not None and stored.definition.max_attempts == 4


async def test_the_concurrency_limits_migration_upgrades_a_file_in_use(sqlite_url: str) -> None:
    """Migration 9 (``soniq_slots``, ``concurrency_key`` and ``hold``, claim indexes on
    claimable rows only) on a file at the previous version with queued jobs in it: they stay
    claimable, unlimited, and limited jobs work afterwards."""
    older = [m for m in load_migrations("sqlite") if m.version < 9]
    with sqlite3.connect(sqlite_url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS soniq_migrations (version INTEGER PRIMARY KEY "
                     "NOT NULL, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        for migration in older:
            conn.executescript(migration.sql)
            conn.execute("INSERT INTO soniq_migrations VALUES (?, ?, '2024-01-01')",
                         (migration.version, migration.name))
        kept = [job(text=str(i)) for i in range(3)]
        for new in kept:
            conn.execute("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, "
                         "attempts, max_attempts, scheduled_at, created_at, updated_at, errors) "
                         "VALUES (?, 'ok', 'default', 100, 'queued', '{}', 0, 3, "
                         "'2024-01-01T00:00:00.000000Z', '2024-01-01T00:00:00.000000Z', "
                         "'2024-01-01T00:00:00.000000Z', '[]')", (new.id,))
    conn.close()
    backend = SqliteBackend(sqlite_url)
    try:
        assert await backend.migrate() == [m.label for m in load_migrations("sqlite")
                                           if m.version >= 9]
        claimed = await backend.claim_jobs(WORKER, None, 10)
        assert sorted(c.id for c in claimed) == sorted(j.id for j in kept)
        assert {c.concurrency_key for c in claimed} == {None}
        limited = [job(text="x")._replace(concurrency_key="k", concurrency_limit=1)
                   for _ in range(2)]
        await backend.insert_jobs(limited)
        assert [c.id for c in await backend.claim_jobs(WORKER, None, 10)] == [limited[0].id]
    finally:
        await backend.close()


async def test_the_queues_migration_upgrades_a_file_in_use(sqlite_url: str) -> None:
    """Migration 8 (``soniq_queues``, ``soniq_audit``) on a file at version 7 with queued jobs
    in two queues: nothing is lost, every queue is listed unpaused, a pause is stored and the
    claim skips that queue."""
    mail, report = job(), job()
    with sqlite3.connect(sqlite_url) as conn:
        conn.execute(MIGRATIONS_TABLE["sqlite"])
        for migration in load_migrations("sqlite"):
            if migration.version <= 7:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO soniq_migrations VALUES (?, ?, ?)",
                             (migration.version, migration.name, to_db(utc_now())))
        for new, queue in ((mail, "mail"), (report, "reports")):
            conn.execute("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args,"
                         " attempts, max_attempts, scheduled_at, created_at, updated_at, errors)"
                         " VALUES (?, 'ok', ?, 100, 'queued', '{}', 0, 3, ?, ?, ?, '[]')",
                         (new.id, queue, *[to_db(utc_now())] * 3))
    async with Soniq(database_url=sqlite_url) as app:
        assert [(q.name, q.paused, q.queued) for q in await app.queues.list()] == [
            ("mail", False, 1), ("reports", False, 1)]
        assert await app.queues.pause("reports") is True
        assert [c.id for c in await app.backend.claim_jobs(WORKER, None, 10)] == [mail.id]
    with sqlite3.connect(sqlite_url) as conn:
        assert conn.execute("SELECT max(version) FROM soniq_migrations").fetchone() == (
            max(m.version for m in load_migrations("sqlite")),)
        assert conn.execute("SELECT name, paused FROM soniq_queues").fetchall() == [
            ("reports", 1)]
        assert conn.execute("SELECT action, targets, outcome FROM soniq_audit").fetchall() == [
            ("queue.pause", '["reports"]', "ok")]


async def test_the_rate_limits_migration_upgrades_a_file_in_use(sqlite_url: str) -> None:
    """Migration 10 (``rate_key``, claim indexes without rate-limited rows, ``soniq_rate_buckets``,
    a queue's bucket) on a file at version 9 with queued jobs and a queue setting in it: the jobs
    stay claimable, and rate limits of jobs and queues work afterwards."""
    with sqlite3.connect(sqlite_url) as conn:
        conn.execute(MIGRATIONS_TABLE["sqlite"])
        for migration in load_migrations("sqlite"):
            if migration.version <= 9:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO soniq_migrations VALUES (?, ?, ?)",
                             (migration.version, migration.name, to_db(utc_now())))
        kept = [job(text=str(i)) for i in range(3)]
        for new in kept:
            conn.execute("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args,"
                         " attempts, max_attempts, scheduled_at, created_at, updated_at, errors)"
                         " VALUES (?, 'ok', 'default', 100, 'queued', '{}', 0, 3, ?, ?, ?, '[]')",
                         (new.id, *[to_db(utc_now())] * 3))
        conn.execute("INSERT INTO soniq_queues (name, rate_limit, updated_at) "
                     "VALUES ('slow', '1/h', ?)", (to_db(utc_now()),))
    conn.close()
    backend = SqliteBackend(sqlite_url)
    try:
        assert await backend.migrate() == [m.label for m in load_migrations("sqlite")
                                           if m.version >= 10]
        claimed = await backend.claim_jobs(WORKER, None, 10)
        assert sorted(c.id for c in claimed) == sorted(j.id for j in kept)
        rated = [job(text="r")._replace(rate_key="") for _ in range(2)]
        slow = [job(queue="slow") for _ in range(2)]
        await backend.insert_jobs([*rated, *slow])
        assert await backend.claim_jobs(WORKER, None, 10) == []
        again = await backend.claim_jobs(WORKER, None, 10, limited=frozenset({"slow"}),
                                         rates=(RateGate("tests.job", Rate(1, 3600.0)),))
        assert sorted(c.id for c in again) == sorted([rated[0].id, slow[0].id])
    finally:
        await backend.close()


async def test_two_backends_keep_a_queue_concurrency_limit_exact(sqlite_url: str) -> None:
    """Two backends on one file race to claim 200 jobs of a queue limited to one at a time:
    never two run at once (the count, the claim and the limit are read under one write lock)."""
    async with Soniq(database_url=sqlite_url) as app:
        await app.queues.set_concurrency_limit("q", 1)
    first, second = SqliteBackend(sqlite_url), SqliteBackend(sqlite_url)
    jobs = [job(queue="q", i=i) for i in range(200)]
    finished: list[str] = []
    try:
        await first.insert_jobs(jobs)

        async def claimer(backend: SqliteBackend) -> None:
            while len(finished) < len(jobs):
                batch = await backend.claim_jobs(WORKER, None, 5, limited=frozenset({"q"}))
                assert len(batch) <= 1
                [stats] = await backend.queue_stats()
                assert stats["processing"] <= 1
                for claimed in batch:
                    await anyio.sleep(0.001)  # the others try while this one runs
                    await backend.complete_jobs([JobOutcome(
                        claimed.id, claimed.lease_id, JobStatus.DONE)])
                    finished.append(claimed.id)
                await anyio.sleep(0.0005)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for backend in (first, second, first, second):
                    tg.start_soon(claimer, backend)
        assert sorted(finished) == sorted(j.id for j in jobs)
    finally:
        await first.close()
        await second.close()


def _at_version(path: str, version: int) -> None:
    """Build the schema of ``version`` by hand (the standard library: foreign keys off)."""
    with sqlite3.connect(path) as conn:
        conn.execute(MIGRATIONS_TABLE["sqlite"])
        for migration in load_migrations("sqlite"):
            if migration.version <= version:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO soniq_migrations VALUES (?, ?, ?)",
                             (migration.version, migration.name, to_db(utc_now())))
    conn.close()


def _job_indexes(path: str) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                            "AND tbl_name = 'soniq_jobs' AND sql IS NOT NULL").fetchall()
    conn.close()
    return {name: " ".join(text.split()) for name, text in rows}


async def test_the_dependencies_migration_rebuilds_the_jobs_table_in_use(sqlite_url: str) -> None:
    """Migration 11 rebuilds ``soniq_jobs`` (a CHECK cannot change on SQLite) on a file at
    version 10 holding queued, processing and done jobs (with a log), a parked limited job and a
    rate-limited one: every row, log and index survives as it was, and they all work after."""
    _at_version(sqlite_url, 10)
    before = _job_indexes(sqlite_url)
    stamp = to_db(utc_now())
    queued, running, done, parked, rated = (new_id() for _ in range(5))
    with sqlite3.connect(sqlite_url) as conn:
        insert = ("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, attempts, "
                  "max_attempts, scheduled_at, created_at, updated_at, errors, worker_id, "
                  "lease_id, result, concurrency_key, hold, rate_key) "
                  "VALUES (?, ?, 'default', 100, ?, '{}', ?, 3, ?, ?, ?, '[]', ?, ?, ?, ?, ?, ?)")
        conn.execute(insert, (queued, "tests.job", "queued", 0, stamp, stamp, stamp, None, None,
                              None, None, None, None))
        conn.execute(insert, (running, "limited", "processing", 1, stamp, stamp, stamp, WORKER,
                              LEASE, None, "k", None, None))
        conn.execute(insert, (done, "tests.job", "done", 1, stamp, stamp, stamp, WORKER, None,
                              "42", None, None, None))
        conn.execute(insert, (parked, "limited", "queued", 0, stamp, stamp, stamp, None, None,
                              None, "k", "slot", None))
        conn.execute(insert, (rated, "tests.job", "queued", 0, stamp, stamp, stamp, None, None,
                              None, None, None, ""))
        conn.execute("INSERT INTO soniq_slots VALUES ('limited', 'k', 1)")
        conn.execute("INSERT INTO soniq_job_logs (job_id, job_name, queue, attempt, level, "
                     "levelno, logger, message, created_at) VALUES "
                     "(?, 'tests.job', 'default', 1, 'INFO', 20, 'x', 'kept', ?)", (done, stamp))
    conn.close()
    backend = SqliteBackend(sqlite_url)
    try:
        assert await backend.migrate() == [m.label for m in load_migrations("sqlite")
                                           if m.version >= 11]
        before.pop("soniq_jobs_dedup_key")  # migration 12 drops it (keys: soniq_unique_keys)
        assert _job_indexes(sqlite_url) == {**before, "soniq_jobs_workflow": (
            "CREATE INDEX soniq_jobs_workflow ON soniq_jobs (workflow_id, id) "
            "WHERE workflow_id IS NOT NULL"), "soniq_jobs_cancelled": (
            "CREATE INDEX soniq_jobs_cancelled ON soniq_jobs (finished_at) "
            "WHERE status = 'cancelled' AND expires_at IS NULL")}
        with sqlite3.connect(sqlite_url) as conn:
            assert conn.execute("SELECT message FROM soniq_job_logs").fetchall() == [("kept",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        conn.close()
        done_record = await backend.get_job(done)
        assert done_record is not None and done_record["result"] == 42
        # The plain claim takes the queued job; the rate-limited one needs its gate.
        [plain] = await backend.claim_jobs(WORKER, None, 10)
        assert plain.id == queued and not plain.has_dependencies
        [gated] = await backend.claim_jobs(WORKER, None, 10,
                                           rates=(RateGate("tests.job", Rate(1, 3600.0)),))
        assert gated.id == rated
        # The running limited job hands its slot to the parked one.
        assert await backend.complete_jobs([JobOutcome(running, LEASE, JobStatus.DONE)]) == [
            running]
        [heir] = await backend.claim_jobs(WORKER, None, 10)
        assert heir.id == parked
        # Dependencies work on the rebuilt table, and a deleted job's logs still go with it.
        after = job()._replace(depends_on=(heir.id,), on_dependency_failure="cancel")
        await backend.insert_jobs([after])
        assert (await backend.get_job(after.id) or {}).get("status") == "waiting"
        await backend.complete_jobs([JobOutcome(heir.id, heir.lease_id, JobStatus.DONE)])
        assert (await backend.get_job(after.id) or {}).get("status") == "queued"
        assert await backend.delete_job(done) is True
        with sqlite3.connect(sqlite_url) as conn:
            assert conn.execute("SELECT count(*) FROM soniq_job_logs").fetchone() == (0,)
        conn.close()
    finally:
        await backend.close()
