"""What only the PostgreSQL backend does: its schema, migrations, database creation, transactional
enqueue on a borrowed or the caller's own connection, uniqueness under concurrency, bulk insert,
NOTIFY, and error translation that never shows the password.

Every async test runs on asyncio and trio. asyncpg itself is asyncio-only, so the tests' own
database access goes through ``_bridge.call`` (a direct await under asyncio, the bridge loop
under trio) -- the same way the backend does it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from soniq import Soniq
from soniq.backends import _bridge
from soniq.backends.postgres import PostgresBackend, gates, inserts, sql
from soniq.backends.postgres import backend as backend_module
from soniq.backends.postgres.errors import redact_url
from soniq.backends.postgres.listener import APPLICATION_NAME
from soniq.errors import ConfigurationError, DatabaseError, SchemaMissingError
from soniq.ids import new_id
from soniq.migrations import MIGRATIONS_TABLE, load_migrations, migration_script
from soniq.serialization import dumps, utc_now
from soniq.settings import load_settings
from soniq.testing import drain
from soniq.types import NewJob
from tests.helpers import on_connection, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

#: The default schema's statements and wake-up channel (db_schema unset).
DEFAULT_SQL = sql.build(None)
CHANNEL = DEFAULT_SQL.names.jobs_channel
CLAIM_ALL_QUEUES = DEFAULT_SQL.claim_all_queues

PASSWORD = "s3cr3t-Pa55word"
#: Every shipped migration: what a fresh database gets.
ALL_MIGRATIONS = load_migrations("postgres")
#: $1 id: a queued job as every schema version stores it (the upgrade tests' data).
QUEUED_ROW = ("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, max_attempts)"
              " VALUES ($1::uuid, 'ok', 'default', 100, 'queued', '{}', 3)")
#: $1 id, $2 lease (and worker id): a running job, likewise.
RUNNING_ROW = ("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, max_attempts,"
               " attempts, lease_id, worker_id) VALUES ($1::uuid, 'ok', 'default', 100,"
               " 'processing', '{}', 3, 1, $2::uuid, $2::uuid)")


def labels_from(version: int) -> list[str]:
    """The migrations an upgrade from ``version - 1`` applies."""
    return [m.label for m in ALL_MIGRATIONS if m.version >= version]


ALL_LABELS = [m.label for m in ALL_MIGRATIONS]

# -- the schema, written out by hand (not derived from the migration files) ----------------------
TIMESTAMPTZ = "timestamp with time zone"
EXPECTED_COLUMNS = {
    "soniq_jobs": [
        ("id", "uuid", True), ("job_name", "text", True), ("queue", "text", True),
        ("priority", "smallint", True), ("status", "text", True), ("args", "jsonb", True),
        ("result", "jsonb", False), ("attempts", "integer", True),
        ("max_attempts", "integer", True), ("scheduled_at", TIMESTAMPTZ, True),
        ("created_at", TIMESTAMPTZ, True), ("updated_at", TIMESTAMPTZ, True),
        ("started_at", TIMESTAMPTZ, False), ("finished_at", TIMESTAMPTZ, False),
        ("expires_at", TIMESTAMPTZ, False), ("errors", "jsonb", True), ("worker_id", "uuid", False),
        ("lease_id", "uuid", False), ("dedup_key", "text", False),
        ("cancel_requested", "boolean", True), ("concurrency_key", "text", False),
        ("hold", "text", False), ("rate_key", "text", False), ("waiting_on", "integer", False),
        ("on_dependency_failure", "text", False), ("has_dependents", "boolean", True),
        ("workflow_id", "uuid", False), ("step_name", "text", False),
        ("awaited", "boolean", True),
        ("progress", "jsonb", False), ("checkpoint", "text", False), ("has_steps", "boolean", False),
    ],
    "soniq_dependencies": [
        ("dependency", "uuid", True), ("dependent", "uuid", True), ("satisfied", "boolean", True),
    ],
    "soniq_workflows": [
        ("id", "uuid", True), ("name", "text", True), ("kind", "text", True),
        ("created_at", TIMESTAMPTZ, True),
    ],
    "soniq_rate_buckets": [
        ("job_name", "text", True), ("key", "text", True), ("tokens", "double precision", False),
        ("refilled_at", TIMESTAMPTZ, False), ("blocked_until", TIMESTAMPTZ, False),
    ],
    "soniq_slots": [("job_name", "text", True), ("key", "text", True), ("active", "integer", True)],
    "soniq_unique_keys": [
        ("key", "text", True), ("job_id", "uuid", True), ("expires_at", TIMESTAMPTZ, False),
        ("taken_at", TIMESTAMPTZ, True),
    ],
    "soniq_steps": [
        ("job_id", "uuid", True), ("step_key", "text", True), ("position", "integer", True),
        ("function", "text", True), ("digest", "text", True), ("status", "text", True),
        ("value", "text", False), ("lease_id", "uuid", True), ("created_at", TIMESTAMPTZ, True),
    ],
    "soniq_workers": [
        ("id", "uuid", True), ("hostname", "text", True), ("pid", "integer", True),
        ("queues", "text[]", False), ("concurrency", "integer", True),
        ("started_at", TIMESTAMPTZ, True), ("last_heartbeat", TIMESTAMPTZ, True),
        ("metadata", "jsonb", True), ("job_names", "text[]", True),
    ],
    "soniq_job_definitions": [
        ("name", "text", True), ("digest", "text", True), ("queue", "text", True),
        ("priority", "integer", True), ("max_attempts", "integer", True),
        ("timeout", "double precision", False), ("encrypt", "boolean", True),
        ("options", "jsonb", True), ("first_seen_at", TIMESTAMPTZ, True),
        ("last_seen_at", TIMESTAMPTZ, True),
    ],
    "soniq_maintenance": [("task", "text", True), ("last_run_at", TIMESTAMPTZ, True)],
    "soniq_schedules": [
        ("name", "text", True), ("job_name", "text", True), ("cron", "text", False),
        ("every_seconds", "double precision", False), ("timezone", "text", True),
        ("queue", "text", False), ("priority", "smallint", False), ("args", "jsonb", True),
        ("paused", "boolean", True), ("next_run_at", TIMESTAMPTZ, True),
        ("last_run_at", TIMESTAMPTZ, False), ("created_at", TIMESTAMPTZ, True),
        ("updated_at", TIMESTAMPTZ, True),
    ],
    "soniq_schedule_fires": [
        ("schedule_name", "text", True), ("fire_at", TIMESTAMPTZ, True),
        ("job_id", "uuid", True), ("fired_at", TIMESTAMPTZ, True),
    ],
    "soniq_webhook_endpoints": [
        ("id", "uuid", True), ("url", "text", True), ("events", "text[]", False),
        ("secrets", "jsonb", True), ("allow_private", "boolean", True),
        ("active", "boolean", True), ("description", "text", False),
        ("created_at", TIMESTAMPTZ, True),
    ],
    "soniq_webhook_deliveries": [
        ("id", "uuid", True), ("endpoint_id", "uuid", True), ("event", "text", True),
        ("payload", "text", True), ("status", "text", True), ("attempts", "integer", True),
        ("next_attempt_at", TIMESTAMPTZ, True), ("last_status_code", "integer", False),
        ("last_error", "text", False), ("created_at", TIMESTAMPTZ, True),
        ("delivered_at", TIMESTAMPTZ, False), ("lease_until", TIMESTAMPTZ, False),
    ],
    "soniq_webhook_events": [
        ("id", "bigint", True), ("endpoint_id", "uuid", True), ("created_at", TIMESTAMPTZ, True),
        ("job_ids", "uuid[]", True), ("job_names", "text[]", True), ("queues", "text[]", True),
        ("attempts", "integer[]", True), ("started_ats", "timestamp with time zone[]", True),
        ("kinds", "text[]", True), ("errors", "text[]", True),
        ("ats", "timestamp with time zone[]", True),
    ],
    "soniq_events": [
        ("id", "bigint", True), ("created_at", TIMESTAMPTZ, True), ("kinds", "text[]", True),
        ("job_ids", "uuid[]", True), ("attempts", "integer[]", True),
        ("ats", "timestamp with time zone[]", True),
        ("started_ats", "timestamp with time zone[]", True), ("payloads", "json[]", True),
    ],
    "soniq_event_readers": [("name", "text", True), ("since", TIMESTAMPTZ, True)],
    "soniq_job_logs": [
        ("id", "bigint", True), ("job_id", "uuid", True), ("job_name", "text", True),
        ("queue", "text", True), ("attempt", "integer", True), ("level", "text", True),
        ("levelno", "integer", True), ("logger", "text", True), ("message", "text", True),
        ("exception", "text", False), ("created_at", TIMESTAMPTZ, True),
    ],
    "soniq_stats_minute": [
        ("bucket", TIMESTAMPTZ, True), ("queue", "text", True), ("done", "integer", True),
        ("dead_letter", "integer", True), ("cancelled", "integer", True),
    ],
    "soniq_migrations": [
        ("version", "integer", True), ("name", "text", True), ("applied_at", TIMESTAMPTZ, True),
    ],
    "soniq_queues": [
        ("name", "text", True), ("paused", "boolean", True), ("concurrency_limit", "integer", False),
        ("rate_limit", "text", False), ("updated_at", TIMESTAMPTZ, True),
        ("tokens", "double precision", False), ("refilled_at", TIMESTAMPTZ, False),
    ],
    "soniq_audit": [
        ("id", "bigint", True), ("at", TIMESTAMPTZ, True), ("actor", "text", True),
        ("client", "text", False), ("action", "text", True), ("targets", "text[]", True),
        ("outcome", "text", True), ("detail", "text", False),
    ],
}
QUEUED = "WHERE ((status = 'queued'::text) AND (hold IS NULL))"
EXPECTED_INDEXES = {
    name: f"CREATE {kind} {name} ON public.{table} USING btree {definition}"
    for name, kind, table, definition in [
        ("soniq_jobs_pkey", "UNIQUE INDEX", "soniq_jobs", "(id)"),
        ("soniq_jobs_claim_idx", "INDEX", "soniq_jobs", f"(priority, scheduled_at, id) {QUEUED}"),
        ("soniq_jobs_queue_claim_idx", "INDEX", "soniq_jobs",
         f"(queue, priority, scheduled_at, id) {QUEUED}"),
        # Concurrency limits: a key's oldest parked job; a key's slot holders (the recount).
        ("soniq_jobs_parked_idx", "INDEX", "soniq_jobs", ("(job_name, concurrency_key, id) "
         "WHERE ((status = 'queued'::text) AND (hold = 'slot'::text))")),
        ("soniq_jobs_slot_holders_idx", "INDEX", "soniq_jobs", ("(job_name, concurrency_key) "
         "WHERE ((concurrency_key IS NOT NULL) AND (hold IS DISTINCT FROM 'slot'::text) AND "
         "(status = ANY (ARRAY['queued'::text, 'processing'::text])))")),
        # Rate limits: a job name's claimable rows per bucket key; the buckets.
        ("soniq_jobs_rated_idx", "INDEX", "soniq_jobs",
         ("(job_name, rate_key, priority, scheduled_at, id) "
          "WHERE ((status = 'queued'::text) AND (hold = 'rate'::text))")),
        ("soniq_rate_buckets_pkey", "UNIQUE INDEX", "soniq_rate_buckets", "(job_name, key)"),
        # Dependencies: the edges, by dependency (the pkey) and by dependent; a workflow's steps.
        ("soniq_dependencies_pkey", "UNIQUE INDEX", "soniq_dependencies",
         "(dependency, dependent)"),
        ("soniq_dependencies_dependent_idx", "INDEX", "soniq_dependencies", "(dependent)"),
        ("soniq_jobs_workflow_idx", "INDEX", "soniq_jobs",
         "(workflow_id, id) WHERE (workflow_id IS NOT NULL)"),
        ("soniq_jobs_cancelled_idx", "INDEX", "soniq_jobs",
         "(finished_at) WHERE ((status = 'cancelled'::text) AND (expires_at IS NULL))"),
        ("soniq_workflows_pkey", "UNIQUE INDEX", "soniq_workflows", "(id)"),
        ("soniq_slots_pkey", "UNIQUE INDEX", "soniq_slots", "(job_name, key)"),
        ("soniq_unique_keys_pkey", "UNIQUE INDEX", "soniq_unique_keys", "(key)"),
        # Durable functions' steps: one read per attempt, by job; the cascade from a job.
        ("soniq_steps_pkey", "UNIQUE INDEX", "soniq_steps", "(job_id, step_key)"),
        ("soniq_jobs_expires_at_idx", "INDEX", "soniq_jobs",
         "(expires_at) WHERE (expires_at IS NOT NULL)"),
        ("soniq_jobs_worker_id_idx", "INDEX", "soniq_jobs",
         "(worker_id) WHERE (status = 'processing'::text)"),
        ("soniq_jobs_dead_letter_idx", "INDEX", "soniq_jobs",
         "(finished_at DESC, id DESC) WHERE (status = 'dead_letter'::text)"),
        ("soniq_workers_pkey", "UNIQUE INDEX", "soniq_workers", "(id)"),
        ("soniq_maintenance_pkey", "UNIQUE INDEX", "soniq_maintenance", "(task)"),
        ("soniq_schedules_pkey", "UNIQUE INDEX", "soniq_schedules", "(name)"),
        # Cron de-duplication is this constraint: one job per schedule and fire time.
        ("soniq_schedule_fires_once", "UNIQUE INDEX", "soniq_schedule_fires",
         "(schedule_name, fire_at)"),
        ("soniq_webhook_endpoints_pkey", "UNIQUE INDEX", "soniq_webhook_endpoints", "(id)"),
        ("soniq_webhook_deliveries_pkey", "UNIQUE INDEX", "soniq_webhook_deliveries", "(id)"),
        # The delivery claim: due pending rows, earliest first.
        ("soniq_webhook_deliveries_due_idx", "INDEX", "soniq_webhook_deliveries",
         "(next_attempt_at, id) WHERE (status = 'pending'::text)"),
        ("soniq_webhook_deliveries_endpoint_idx", "INDEX", "soniq_webhook_deliveries",
         "(endpoint_id, created_at)"),
        # The window of deliveries written from the event log: an endpoint's pending rows.
        ("soniq_webhook_deliveries_pending_idx", "INDEX", "soniq_webhook_deliveries",
         "(endpoint_id) WHERE (status = 'pending'::text)"),
        ("soniq_webhook_events_pkey", "UNIQUE INDEX", "soniq_webhook_events", "(id)"),
        ("soniq_webhook_events_endpoint_idx", "INDEX", "soniq_webhook_events", "(endpoint_id, id)"),
        # Retention: finished rows by when they finished (their next_attempt_at).
        ("soniq_webhook_deliveries_finished_idx", "INDEX", "soniq_webhook_deliveries",
         "(next_attempt_at) WHERE (status <> 'pending'::text)"),
        ("soniq_events_pkey", "UNIQUE INDEX", "soniq_events", "(id)"),
        ("soniq_event_readers_pkey", "UNIQUE INDEX", "soniq_event_readers", "(name)"),
        ("soniq_job_logs_pkey", "UNIQUE INDEX", "soniq_job_logs", "(id)"),
        ("soniq_job_logs_job_idx", "INDEX", "soniq_job_logs", "(job_id, id)"),
        ("soniq_job_logs_created_at_idx", "INDEX", "soniq_job_logs", "(created_at)"),
        ("soniq_stats_minute_pkey", "UNIQUE INDEX", "soniq_stats_minute", "(bucket, queue)"),
        ("soniq_job_definitions_pkey", "UNIQUE INDEX", "soniq_job_definitions", "(name, digest)"),
        ("soniq_migrations_pkey", "UNIQUE INDEX", "soniq_migrations", "(version)"),
        ("soniq_queues_pkey", "UNIQUE INDEX", "soniq_queues", "(name)"),
        ("soniq_audit_pkey", "UNIQUE INDEX", "soniq_audit", "(id)"),
    ]
}
EXPECTED_CHECKS = {
    "soniq_jobs_status_check":
        "CHECK ((status = ANY (ARRAY['waiting'::text, 'queued'::text, 'processing'::text, "
        "'done'::text, 'dead_letter'::text, 'cancelled'::text])))",
    "soniq_jobs_on_dependency_failure_check":
        "CHECK ((on_dependency_failure = ANY (ARRAY['cancel'::text, 'run'::text, 'wait'::text])))",
    "soniq_workflows_kind_check":
        "CHECK ((kind = ANY (ARRAY['workflow'::text, 'batch'::text])))",
    "soniq_steps_status_check":
        "CHECK ((status = ANY (ARRAY['done'::text, 'error'::text, 'sleep'::text, "
        "'marker'::text])))",
    "soniq_jobs_hold_check": "CHECK ((hold = ANY (ARRAY['slot'::text, 'rate'::text])))",
    "soniq_schedules_timing_check": "CHECK (((cron IS NULL) <> (every_seconds IS NULL)))",
    "soniq_webhook_deliveries_status_check":
        "CHECK ((status = ANY (ARRAY['pending'::text, 'delivered'::text, 'failed'::text])))",
    "soniq_queues_concurrency_limit_check": "CHECK ((concurrency_limit > 0))",
    "soniq_queues_rate_limit_check": "CHECK ((rate_limit ~ '^[1-9][0-9]*/[smh]$'::text))",
}

COLUMNS_SQL = """
SELECT c.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname LIKE 'soniq%'
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""
INDEXES_SQL = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename LIKE 'soniq%'
"""
CHECKS_SQL = """
SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint
WHERE contype = 'c' AND conrelid::regclass::text LIKE 'soniq%'
"""


# -- helpers ----------------------------------------------------------------------------------------
async def fetch(url: str, query: str, *args: Any) -> list[Any]:
    return await on_connection(url, lambda conn: conn.fetch(query, *args))  # type: ignore[no-any-return]


async def schema_of(url: str) -> dict[str, Any]:
    columns: dict[str, list[tuple[str, str, bool]]] = {}
    for row in await fetch(url, COLUMNS_SQL):
        columns.setdefault(row["table_name"], []).append(
            (row["column_name"], row["type"], row["not_null"]))
    indexes = {row["indexname"]: row["indexdef"] for row in await fetch(url, INDEXES_SQL)}
    checks = {row["conname"]: row["definition"] for row in await fetch(url, CHECKS_SQL)}
    return {"columns": columns, "indexes": indexes, "checks": checks}


def url_for(server_url: str, database: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def backend_for(url: str) -> PostgresBackend:
    return PostgresBackend(url, load_settings({"database_url": url, "pool_min_size": 1,
                                               "pool_max_size": 4}))


def new_job(*, queue: str = "default", dedup_key: str | None = None, **args: Any) -> NewJob:
    return NewJob(id=new_id(), job_name="tests.job", queue=queue, priority=100,
                  args=dumps(args), max_attempts=4, dedup_key=dedup_key)


def make_app(url: str) -> Soniq:
    app = Soniq(database_url=url, pool_min_size=1)

    @app.job(name="tests.send")
    async def send(to: str) -> None: ...

    @app.job(name="tests.unique", unique=True)
    async def unique(key: int) -> None: ...

    return app


@pytest.fixture
async def app(pg_url: str) -> AsyncIterator[Soniq]:
    soniq = make_app(pg_url)
    try:
        yield soniq
    finally:
        await soniq.close()


async def database_exists(server_url: str, name: str) -> bool:
    return bool(await fetch(server_url, "SELECT 1 FROM pg_database WHERE datname = $1", name))


class NotificationRecorder:
    """LISTENs on the jobs channel. ``collect()`` sends a sentinel and returns what arrived
    before it: notifications are delivered in commit order, so nothing is missed and no sleep
    is needed."""

    SENTINEL = "--sentinel--"

    def __init__(self, url: str) -> None:
        self.url = url
        self.payloads: list[str] = []
        self.conn: Any = None
        self.seen_sentinel: asyncio.Event | None = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.payloads.append(payload)
        if payload == self.SENTINEL and self.seen_sentinel is not None:
            self.seen_sentinel.set()

    async def _start(self) -> None:
        self.seen_sentinel = asyncio.Event()
        self.conn = await asyncpg.connect(self.url)
        await self.conn.add_listener(CHANNEL, self._on_notify)

    async def _collect(self) -> list[str]:
        assert self.seen_sentinel is not None
        try:
            await self.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self.SENTINEL)
            await asyncio.wait_for(self.seen_sentinel.wait(), timeout=10)
        finally:
            await self.conn.close()
        return self.payloads[:self.payloads.index(self.SENTINEL)]

    async def start(self) -> None:
        await _bridge.call(self._start)

    async def collect(self) -> list[str]:
        return await _bridge.call(self._collect)


class Rollback(Exception):
    pass


# -- schema and migrations --------------------------------------------------------------------------
async def test_schema_matches_the_design(pg_url: str) -> None:
    schema = await schema_of(pg_url)
    assert schema["columns"] == EXPECTED_COLUMNS
    assert schema["indexes"] == EXPECTED_INDEXES
    assert schema["checks"] == EXPECTED_CHECKS


async def test_migrate_twice_changes_nothing(pg_url: str) -> None:
    before = await schema_of(pg_url)
    backend = backend_for(pg_url)
    try:
        assert await backend.migrate() == []
        assert await backend.migrate() == []
    finally:
        await backend.close()
    assert await schema_of(pg_url) == before
    rows = await fetch(pg_url, "SELECT version, name FROM soniq_migrations ORDER BY version")
    assert [tuple(row) for row in rows] == [(m.version, m.name) for m in ALL_MIGRATIONS]


async def test_the_printed_script_builds_what_setup_builds(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """``soniq migrations sql`` applied by hand: the same schema and migration rows as setup;
    without the newest row, that one migration is reported pending."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    await on_connection(url, lambda conn: conn.execute(migration_script("postgres")))
    assert await schema_of(url) == await schema_of(pg_url)
    rows = await fetch(url, "SELECT version, name FROM soniq_migrations ORDER BY version")
    assert [tuple(row) for row in rows] == [(m.version, m.name) for m in ALL_MIGRATIONS]
    async with Soniq(database_url=url, pool_min_size=1) as app:  # opening checks the schema
        await fetch(url, "DELETE FROM soniq_migrations WHERE version = $1",
                    ALL_MIGRATIONS[-1].version)
        info = await app.database_info()
    assert info["applied_migrations"] == ALL_LABELS[:-1]
    assert info["pending_migrations"] == [ALL_LABELS[-1]]


async def migrate_to(conn: Any, version: int) -> None:
    """Apply the shipped migrations up to ``version`` as ``setup`` would: a database as it was
    then, for an upgrade test to put data in."""
    await conn.execute(MIGRATIONS_TABLE["postgres"])
    for migration in ALL_MIGRATIONS:
        if migration.version <= version:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(DEFAULT_SQL.record_migration, migration.version, migration.name)


async def test_the_event_log_migration_upgrades_a_database_in_use(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """Migration 10 (the event log, ``soniq_events``) on a database at version 9 with jobs and
    webhook events in it: nothing is lost, the webhooks' pending log rows still become
    deliveries, and a finish then records its events in the new log for the webhook store."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    endpoint, logged_job = str(uuid.uuid4()), str(uuid.uuid4())

    async def at_version_9(conn: Any) -> None:
        await migrate_to(conn, 9)
        await conn.execute(
            "INSERT INTO soniq_webhook_endpoints (id, url, secrets, allow_private, active,"
            " created_at) VALUES ($1::uuid, 'https://example.com/hook', '[]', true, true,"
            " now() - interval '1 minute')", endpoint)
        # A finish's row at version 9: job.started and job.done of one attempt.
        await conn.execute(
            "INSERT INTO soniq_webhook_events (endpoint_id, job_ids, job_names, queues, attempts,"
            " started_ats, kinds, errors, ats) VALUES ($1::uuid, ARRAY[$2::uuid], '{old}',"
            " '{default}', '{1}', ARRAY[now()], '{job.done}', '{NULL}', ARRAY[now()])",
            endpoint, logged_job)
        await conn.execute("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args,"
                           " max_attempts) VALUES ($1::uuid, 'ok', 'default', 100, 'queued',"
                           " '{}', 3)", new_id())

    await on_connection(url, at_version_9)
    with pytest.raises(SchemaMissingError, match="0010_event_log"):
        async with Soniq(database_url=url, pool_min_size=1):
            pass
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(10)
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)
    # An endpoint existed: the webhook store reads the log (cancel and rescue record for it).
    assert [r["name"] for r in await fetch(url, "SELECT name FROM soniq_event_readers")] == [
        "webhooks"]

    async with Soniq(database_url=url, pool_min_size=1) as app:
        @app.job(name="ok")
        async def ok() -> None:
            return None

        store = app.backend.webhooks  # type: ignore[attr-defined]
        deliveries = await store.list_deliveries(endpoint_id=endpoint, status=None, limit=10)
        assert sorted((d.event, json.loads(d.payload)["data"]["job_id"]) for d in deliveries) == [
            ("job.done", logged_job), ("job.started", logged_job)]
        assert store.record_lifecycle(frozenset({"job.done"})) == {"job.done"}
        assert len(await drain(app)) == 1
        assert len(await fetch(url, "SELECT * FROM soniq_events")) == 1
        deliveries = await store.list_deliveries(endpoint_id=endpoint, status=None, limit=10)
        assert sorted(json.loads(d.payload)["data"]["job_name"] for d in deliveries) == [
            "ok", "ok", "old", "old"]
        assert await fetch(url, "SELECT * FROM soniq_events") == []


async def test_migrate_creates_a_missing_database(pg_server: str,
                                                  fresh_database: tuple[str, str]) -> None:
    name, url = fresh_database
    assert not await database_exists(pg_server, name)
    backend = backend_for(url)
    try:
        assert await backend.migrate() == ALL_LABELS
        assert await database_exists(pg_server, name)
        await backend.initialize()  # the schema check passes
        assert await backend.queue_stats() == []
    finally:
        await backend.close()
    assert (await schema_of(url))["indexes"] == EXPECTED_INDEXES


async def test_concurrent_migrations_apply_once(fresh_database: tuple[str, str]) -> None:
    _, url = fresh_database
    backends = [backend_for(url), backend_for(url)]
    results: list[list[str]] = []

    async def run(backend: PostgresBackend) -> None:
        results.append(await backend.migrate())

    try:
        async with anyio.create_task_group() as tg:
            for backend in backends:
                tg.start_soon(run, backend)
    finally:
        for backend in backends:
            await backend.close()
    assert sorted(results) == [[], ALL_LABELS]
    assert len(await fetch(url, "SELECT * FROM soniq_migrations")) == len(ALL_LABELS)
    assert await fetch(url, "SELECT * FROM pg_locks WHERE locktype = 'advisory' AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())") == []


async def test_unmigrated_database_names_soniq_setup(pg_server: str,
                                                     fresh_database: tuple[str, str]) -> None:
    name, url = fresh_database
    app = make_app(url)
    try:
        # Missing database first, then an empty one: both point at `soniq setup`.
        with pytest.raises(SchemaMissingError, match="soniq setup"):
            await app.get_queue_stats()
        await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
        with pytest.raises(SchemaMissingError, match="soniq setup"):
            await app.enqueue("tests.send", to="a@example.com")
        with pytest.raises(SchemaMissingError, match="soniq setup"):
            await app.backend.initialize()
        assert await app.setup() == ALL_LABELS
        assert await app.get_queue_stats() == []
    finally:
        await app.close()


async def test_a_dedup_key_is_held_in_soniq_unique_keys(app: Soniq, pg_url: str) -> None:
    job_id = await app.enqueue("tests.unique", key=1)
    [row] = await fetch(pg_url, "SELECT k.job_id::text, j.dedup_key = k.key AS shown "
                        "FROM soniq_unique_keys AS k JOIN soniq_jobs AS j ON j.id = k.job_id")
    assert tuple(row) == (job_id, True)


# -- transactional enqueue --------------------------------------------------------------------------
async def test_enqueue_joins_a_borrowed_connections_transaction(app: Soniq,
                                                                anyio_backend: str) -> None:
    async with app.backend.acquire() as conn:
        if anyio_backend == "asyncio":
            assert isinstance(conn, asyncpg.pool.PoolConnectionProxy)
        else:
            assert isinstance(conn, _bridge.BridgedConnection)
        async with conn.transaction():
            committed = await app.enqueue("tests.send", to="a@example.com", connection=conn)
            assert await conn.fetchval("SELECT count(*) FROM soniq_jobs") == 1
            assert await app.get_job(committed) is None  # not visible outside until commit
        assert await app.get_job(committed) is not None

        ids: list[str] = []

        async def enqueue_then_fail() -> None:
            async with conn.transaction():
                ids.append(await app.enqueue("tests.send", to="b@example.com", connection=conn))
                ids.extend(await app.enqueue_many("tests.send", [{"to": "c"}, {"to": "d"}],
                                                  connection=conn))
                raise Rollback

        with pytest.raises(Rollback):
            await enqueue_then_fail()
    assert len(ids) == 3
    assert [await app.get_job(job_id) for job_id in ids] == [None, None, None]
    assert len(await app.list_jobs()) == 1


async def test_a_lent_connection_comes_back_with_its_session_reset(pg_url: str) -> None:
    """Soniq's own calls skip asyncpg's per-release reset query; a connection lent to user code
    still gets it, so its SETs and advisory locks do not leak into the next borrower."""
    app = Soniq(database_url=pg_url, pool_min_size=1, pool_max_size=1)
    try:
        async with app.backend.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("SET statement_timeout = '1234ms'")
            await conn.execute("SELECT pg_advisory_lock(4242)")
        assert await app.list_jobs() == []  # an internal call on the same single connection
        async with app.backend.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert await conn.fetchval("SHOW statement_timeout") == "0"
            assert await conn.fetchval("SHOW plan_cache_mode") == "auto"  # enqueue's generic plans
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid()") == 0
    finally:
        await app.close()


async def test_worker_loops_use_their_own_pool_that_plans_every_execution(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, pool_min_size=1)
    try:
        worker_id = new_id()
        assert await app.backend.claim_jobs(worker_id, None, 10) == []
        loops = await app.backend._loops()  # type: ignore[attr-defined]

        async def plan_cache_mode(pool: Any) -> str:
            async with pool.acquire() as conn:
                return str(await conn.fetchval("SHOW plan_cache_mode"))

        assert await _bridge.call(plan_cache_mode, loops) == "force_custom_plan"
        main = await app.backend._ready()  # type: ignore[attr-defined]
        assert await _bridge.call(plan_cache_mode, main) == "auto"
    finally:
        await app.close()


async def test_a_claim_commits_without_waiting_for_the_flush_and_only_itself(
        pg_url: str, app: Soniq) -> None:
    """The claim turns synchronous_commit off for its own transaction (sql.py, claim): inside a
    transaction it shows, and the session is back to 'on' after it, so the finishes that follow on
    the same connection still wait for their WAL flush."""
    await app.enqueue("tests.send", to="a")

    async def check(conn: Any) -> None:
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        async with conn.transaction():
            assert len(await conn.fetch(CLAIM_ALL_QUEUES, new_id(), None, 10, new_id(), [])) == 1
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        await conn.execute("UPDATE soniq_jobs SET status = 'queued', lease_id = NULL")
        assert len(await conn.fetch(CLAIM_ALL_QUEUES, new_id(), None, 10, new_id(), [])) == 1
        assert await conn.fetchval("SHOW synchronous_commit") == "on"  # autocommitted claim

    await on_connection(pg_url, check)


async def test_jobs_of_a_lost_claim_answer_survive_a_failed_retry(
        app: Soniq, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim whose answer was lost may have committed: the worker's next claim hands out its
    jobs. When that next claim fails too, after finding them, they are not dropped (nothing would
    rescue them while the worker heartbeats): the claim after it hands them out."""
    from soniq.types import WorkerInfo

    backend = app.backend
    worker = WorkerInfo(new_id(), "h", 1, None, 1)
    await backend.register_worker(worker)
    job_id = await app.enqueue("tests.send", to="a")
    real_call = backend_module.call

    async def answer_lost(fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = await real_call(fn, *args, **kwargs)
        if fn is gates.claim:  # committed; then the connection drops
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")
        return result

    monkeypatch.setattr(backend_module, "call", answer_lost)
    with pytest.raises(DatabaseError):
        await backend.claim_jobs(worker.id, None, 5)  # takes the job; the answer is lost
    with pytest.raises(DatabaseError):
        await backend.claim_jobs(worker.id, None, 5)  # finds it, then its own claim fails
    monkeypatch.setattr(backend_module, "call", real_call)
    [claimed] = await backend.claim_jobs(worker.id, None, 5)
    assert (claimed.id, claimed.attempts) == (job_id, 1)


async def test_statement_pool_survives_cancelled_and_killed_connections(pg_url: str) -> None:
    """Single statements reuse idle connections without asyncpg's checkout; a statement cancelled
    mid-flight or a connection the server killed must not poison the next call."""
    app = Soniq(database_url=pg_url, pool_min_size=1, pool_max_size=2)
    try:
        pool = await app.backend._ready()  # type: ignore[attr-defined]
        with anyio.move_on_after(0.2) as scope:
            await _bridge.call(pool.fetchval, "SELECT pg_sleep(30)")
        assert scope.cancelled_caught
        with anyio.fail_after(5):  # not stuck behind the cancelled sleep
            assert await _bridge.call(pool.fetchval, "SELECT 41 + 1") == 42
        killer = await _bridge.call(asyncpg.connect, pg_url)
        try:
            await _bridge.call(
                killer.execute, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await _bridge.call(killer.close)
        failures = 0
        for _ in range(3):  # each broken idle connection fails at most once, then is replaced
            try:
                assert await app.get_queue_stats() == []
                break
            except DatabaseError:
                failures += 1
        assert failures < 3
    finally:
        await app.close()


async def test_statement_pool_drops_a_parked_connection_lost_while_parked(pg_url: str) -> None:
    """A parked connection whose server session ends (a restart, a crash, a cut link) is released
    to the asyncpg pool by asyncpg itself, which detaches the proxy still parked here: the next
    statement must take another connection, not call the detached one (issue #19 item 5:
    ``InterfaceError: cannot call Connection.is_closed(): connection has been released back to
    the pool``)."""
    app = Soniq(database_url=pg_url, pool_min_size=1, pool_max_size=2)
    try:
        pool = await app.backend._ready()  # type: ignore[attr-defined]
        pid = await _bridge.call(pool.fetchval, "SELECT pg_backend_pid()")
        [parked] = pool._parked
        lost: list[object] = []
        await _bridge.call(_add_termination_listener, parked, lost.append)
        killer = await _bridge.call(asyncpg.connect, pg_url)
        try:
            assert await _bridge.call(killer.fetchval, "SELECT pg_terminate_backend($1)", pid)
        finally:
            await _bridge.call(killer.close)
        await wait_for(lambda: lost, message="the parked connection's loss to be seen")
        assert pool._parked == [parked]  # still parked, but asyncpg took it back
        with anyio.fail_after(10):
            assert await _bridge.call(pool.fetchval, "SELECT 41 + 1") == 42
            assert await app.get_queue_stats() == []
    finally:
        await app.close()


async def _add_termination_listener(conn: Any, callback: Any) -> None:
    conn.add_termination_listener(callback)


async def test_statement_pool_never_parks_a_connection_someone_waits_for(pg_url: str) -> None:
    """With one connection in all, statements and a borrowed connection take turns instead of
    the statements' parked connection starving the borrower (or the other way round)."""
    app = Soniq(database_url=pg_url, pool_min_size=1, pool_max_size=1)
    try:
        async def borrow() -> None:
            async with app.backend.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1

        with anyio.fail_after(20):
            for _ in range(3):
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(app.get_queue_stats)
                        tg.start_soon(borrow)
    finally:
        await app.close()


@asynccontextmanager
async def own_connection(url: str) -> AsyncIterator[tuple[Any, Any]]:
    """(connection, transaction-capable handle) of a plain ``asyncpg.connect`` connection. Under
    trio the connection lives on the bridge loop, the only place asyncpg can run."""
    raw = await _bridge.call(asyncpg.connect, url)
    try:
        yield raw, (raw if _bridge.on_asyncio() else _bridge.BridgedConnection(raw))
    finally:
        await _bridge.call(raw.close)


async def test_enqueue_joins_the_callers_own_connection(app: Soniq, pg_url: str) -> None:
    async with own_connection(pg_url) as (raw, conn):
        async with conn.transaction():
            committed = await app.enqueue("tests.send", to="a@example.com", connection=raw)
        rolled_back: list[str] = []

        async def enqueue_then_fail() -> None:
            async with conn.transaction():
                rolled_back.append(await app.enqueue("tests.send", to="b", connection=raw))
                raise Rollback

        with pytest.raises(Rollback):
            await enqueue_then_fail()
    assert await app.get_job(committed) is not None
    assert len(rolled_back) == 1 and await app.get_job(rolled_back[0]) is None


async def test_bulk_insert_on_a_connection_is_atomic_across_chunks(
        app: Soniq, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inserts, "INSERT_CHUNK_SIZE", 3)
    jobs = [new_job(i=i) for i in range(7)]
    broken = [*jobs[:5], jobs[0]]  # the repeated id fails in the second chunk
    async with own_connection(pg_url) as (raw, _):
        with pytest.raises(DatabaseError, match="duplicate key"):
            await app.backend.insert_jobs(broken, connection=raw)
        assert await app.backend.insert_jobs(jobs, connection=raw) == [j.id for j in jobs]
    assert len(await app.list_jobs()) == 7


# -- uniqueness, bulk insert, NOTIFY ----------------------------------------------------------------
async def test_concurrent_unique_enqueues_make_one_job(app: Soniq) -> None:
    ids: list[str] = []

    async def enqueue() -> None:
        ids.append(await app.enqueue("tests.unique", key=42))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(enqueue)
    assert len(ids) == 50 and len(set(ids)) == 1
    [record] = await app.list_jobs()
    assert record["id"] == ids[0] and record["dedup_key"] is not None


async def test_batch_dedup_matches_memory_across_chunks(
        app: Soniq, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inserts, "INSERT_CHUNK_SIZE", 2)
    [held] = await app.backend.insert_jobs([new_job(dedup_key="held")])
    jobs = [new_job(dedup_key="k"), new_job(), new_job(dedup_key="held"), new_job(dedup_key="k"),
            new_job(queue="other")]
    ids = await app.backend.insert_jobs(jobs)
    assert ids == [jobs[0].id, jobs[1].id, held, jobs[0].id, jobs[4].id]
    assert len(await app.list_jobs()) == 4


async def test_enqueue_many_inserts_12000_in_order_with_one_notify(app: Soniq,
                                                                   pg_url: str) -> None:
    recorder = NotificationRecorder(pg_url)
    await recorder.start()
    args = [{"to": f"user{i}@example.com"} for i in range(12_000)]
    ids = await app.enqueue_many("tests.send", args)
    assert len(ids) == len(set(ids)) == 12_000
    rows = await fetch(pg_url, "SELECT id, args->>'to' AS to FROM soniq_jobs")
    stored = {str(row["id"]): row["to"] for row in rows}
    assert [stored[job_id] for job_id in ids] == [a["to"] for a in args]
    # One COPY: one wake-up for the queue, not one per row.
    assert await recorder.collect() == ["default"]


async def test_bulk_insert_paths_store_the_same_rows_and_wake_only_due_queues(
        app: Soniq, pg_url: str) -> None:
    """COPY (several jobs, no dedup keys, all due now or all timed) and INSERT ... unnest (the
    rest) store identical rows; only queues with a due job are woken."""
    recorder = NotificationRecorder(pg_url)
    await recorder.start()
    soon, later = utc_now() - timedelta(seconds=1), utc_now() + timedelta(hours=1)
    batches = {
        "copy, due now": [new_job(queue="now", n=1), new_job(queue="now2", n=2)],
        "copy, timed": [new_job(queue="past", n=3)._replace(scheduled_at=soon),
                        new_job(queue="future", n=4)._replace(scheduled_at=later)],
        "unnest, mixed times": [new_job(queue="mixed", n=5),
                                new_job(queue="mixed-later", n=6)._replace(scheduled_at=later)],
        "unnest, deduplicated": [new_job(queue="dedup", dedup_key="k", n=7),
                                 new_job(queue="dedup", n=8)],
    }
    for jobs in batches.values():
        assert await app.backend.insert_jobs(jobs) == [job.id for job in jobs]
    for label, jobs in batches.items():
        for job in jobs:
            record = await app.get_job(job.id)
            assert record is not None, label
            assert (record["queue"], record["args"], record["status"], record["attempts"],
                    record["max_attempts"], record["priority"]) == (
                job.queue, json.loads(job.args), "queued", 0, job.max_attempts, job.priority), label
            if job.scheduled_at is not None:
                assert record["scheduled_at"] == job.scheduled_at, label
            else:
                assert record["scheduled_at"] <= utc_now(), label
    assert sorted(await recorder.collect()) == ["dedup", "mixed", "now", "now2", "past"]


async def test_notify_only_for_new_due_jobs(app: Soniq, pg_url: str) -> None:
    recorder = NotificationRecorder(pg_url)
    await recorder.start()
    await app.enqueue("tests.send", to="later", scheduled_at=3600)
    first = await app.enqueue("tests.unique", key=1, queue="mail")
    assert await app.enqueue("tests.unique", key=1, queue="mail") == first  # dedup hit
    await app.backend.insert_jobs([new_job(queue="a"), new_job(queue="b"), new_job(queue="a")])
    assert sorted(await recorder.collect()) == ["a", "b", "mail"]


# -- LISTEN ----------------------------------------------------------------------------------------
async def test_listen_raises_database_error_when_its_connection_dies(pg_url: str) -> None:
    backend = backend_for(pg_url)
    woken = anyio.Event()

    def on_notify(channel: str, payload: str) -> None:  # runs in the test's own event loop
        if (channel, payload) == (CHANNEL, "q"):
            woken.set()

    async def kill_listener(conn: Any) -> int:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = $1", APPLICATION_NAME)

    try:
        # listen() must end with DatabaseError (the runtime then reconnects), not hang.
        with (anyio.fail_after(10),
              pytest.RaisesGroup(pytest.RaisesExc(DatabaseError, match="LISTEN connection"))):
            async with anyio.create_task_group() as tg:
                await tg.start(backend.listen, on_notify)
                await backend.insert_jobs([new_job(queue="q")])
                await woken.wait()
                assert await on_connection(pg_url, kill_listener) == 1
                await anyio.sleep_forever()
    finally:
        await backend.close()


def test_transaction_pooling_mode_disables_listen() -> None:
    url = "postgresql://postgres@127.0.0.1/soniq"
    settings = load_settings({"database_url": url, "statement_cache_size": 0})
    assert PostgresBackend(url, settings).supports_listen is False
    assert backend_for(url).supports_listen is True


# -- errors and secrets -----------------------------------------------------------------------------
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_credentials(server_url: str, user: str, port: int | None = None) -> str:
    parts = urlsplit(server_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{PASSWORD}@{host}:{port or parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, "/soniq_never_created", "", ""))


@pytest.mark.parametrize("failure", ["unreachable port", "unknown role"])
async def test_connection_failures_hide_the_password(pg_server: str, failure: str) -> None:
    if failure == "unreachable port":
        url = with_credentials(pg_server, "postgres", port=unused_port())
    else:
        url = with_credentials(pg_server, f"no_such_role_{uuid.uuid4().hex[:8]}")
    app = make_app(url)
    try:
        assert PASSWORD not in repr(app.backend)
        assert "***" in repr(app.backend)
        for attempt in (app.get_queue_stats, app.setup,
                        lambda: app.enqueue("tests.send", to="x")):
            with pytest.raises(DatabaseError) as caught:
                await attempt()
            message = str(caught.value)
            assert PASSWORD not in message and "***" in message, message
            assert isinstance(caught.value.__cause__, OSError | asyncpg.PostgresError)
    finally:
        await app.close()


async def test_malformed_url_is_a_configuration_error() -> None:
    backend = backend_for(f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/db")
    with pytest.raises(ConfigurationError) as caught:
        await backend.initialize()
    assert PASSWORD not in str(caught.value)


def test_redact_url() -> None:
    assert redact_url(f"postgresql://bob:{PASSWORD}@db:5432/app") == "postgresql://bob:***@db:5432/app"
    assert redact_url("postgresql://bob@db/app") == "postgresql://bob@db/app"
    assert redact_url("postgresql://db/app") == "postgresql://db/app"
    assert PASSWORD not in redact_url(f"postgresql://db/app?user=bob&password={PASSWORD}")
    assert PASSWORD not in redact_url(f"postgresql://bob:{PASSWORD}@[::1]:5432/app?sslmode=require")


async def test_the_job_definitions_migration_upgrades_a_database_in_use(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """Migration 11 (``soniq_job_definitions``, ``soniq_workers.job_names``) on a database at
    version 10 with a job and a worker row in it: nothing is lost, the old worker row lists no
    job names, and a worker then stores its definition and its names."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    worker, job_id = new_id(), new_id()

    async def at_version_10(conn: Any) -> None:
        await migrate_to(conn, 10)
        await conn.execute("INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args,"
                           " max_attempts) VALUES ($1::uuid, 'ok', 'default', 100, 'queued',"
                           " '{}', 3)", job_id)
        await conn.execute("INSERT INTO soniq_workers (id, hostname, pid, concurrency)"
                           " VALUES ($1::uuid, 'old-host', 7, 2)", worker)

    await on_connection(url, at_version_10)
    with pytest.raises(SchemaMissingError, match="0011_job_definitions"):
        async with Soniq(database_url=url, pool_min_size=1):
            pass
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(11)
        assert [(w["hostname"], w["job_names"]) for w in await backend.list_workers()] == [
            ("old-host", [])]
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)

    async with Soniq(database_url=url, pool_min_size=1) as app:
        @app.job(name="ok")
        async def ok() -> None:
            return None

        assert [r["id"] for r in await drain(app)] == [job_id]
        stored = await app.definitions.get("ok")
        assert stored is not None and stored.definition.max_attempts == 4


async def test_the_queues_migration_upgrades_a_database_in_use(
        pg_url: str, pg_server: str, fresh_database: tuple[str, str]) -> None:
    """Migration 12 (``soniq_queues``, ``soniq_audit``) on a database at version 11 with queued
    jobs in two queues: nothing is lost, every queue is listed unpaused, and after a pause the
    claim skips that queue."""
    name, url = fresh_database
    await on_connection(pg_server, lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
    mail, report = new_id(), new_id()

    async def at_version_11(conn: Any) -> None:
        await migrate_to(conn, 11)
        for job_id, queue in ((mail, "mail"), (report, "reports")):
            await conn.execute("INSERT INTO soniq_jobs (id, job_name, queue, priority, status,"
                               " args, max_attempts) VALUES ($1::uuid, 'ok', $2, 100, 'queued',"
                               " '{}', 3)", job_id, queue)

    await on_connection(url, at_version_11)
    with pytest.raises(SchemaMissingError, match="0012_queues"):
        async with Soniq(database_url=url, pool_min_size=1):
            pass
    backend = backend_for(url)
    try:
        assert await backend.migrate() == labels_from(12)
    finally:
        await backend.close()
    assert await schema_of(url) == await schema_of(pg_url)

    async with Soniq(database_url=url, pool_min_size=1) as app:
        assert [(q.name, q.paused, q.queued) for q in await app.queues.list()] == [
            ("mail", False, 1), ("reports", False, 1)]
        assert await app.queues.pause("reports", actor="upgrade-test") is True
        claimed = await app.backend.claim_jobs(new_id(), None, 10)
        assert [job.id for job in claimed] == [mail]
        assert app.backend.audit is not None
        [entry] = await app.backend.audit.list(10)
        assert (entry.actor, entry.action, entry.targets) == (
            "upgrade-test", "queue.pause", ("reports",))
