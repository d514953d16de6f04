"""``db_schema``: every table, channel and lock key of an instance lives in its own schema, so two
apps in two schemas of one database (and one in the default schema) run side by side without
seeing each other's jobs, workers, schedules, webhooks, dead letters or wake-ups.

Workers poll every 30 s here: a job finished within the deadline was woken by its own NOTIFY.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from soniq import Soniq
from soniq.backends.postgres import PostgresBackend, sql
from soniq.backends.postgres.names import DEFAULT_CHANNELS, MIGRATION_LOCK_KEY, names
from soniq.errors import ConfigurationError, SchemaMissingError
from soniq.settings import load_settings
from tests.helpers import running_worker, wait_for, wait_for_status

SCHEMAS = ("alpha", "beta")
#: The longest schema name PostgreSQL allows (63 bytes): its channels must be shortened.
LONGEST = "s" * 63


def _setup_schemas(url: str, *schemas: str) -> None:
    async def run() -> None:
        for schema in schemas:
            app = Soniq(database_url=url, db_schema=schema)
            try:
                assert len(await app.setup()) > 0
            finally:
                await app.close()

    asyncio.run(run())


def _drop_schemas(url: str, *schemas: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {', '.join(schemas)} CASCADE")
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def schemas_url(pg_url: str) -> Iterator[str]:
    """The test database with the schemas alpha and beta set up (dropped afterwards) beside the
    default one."""
    _setup_schemas(pg_url, *SCHEMAS)
    yield pg_url
    _drop_schemas(pg_url, *SCHEMAS)


def _app(url: str, schema: str | None) -> Soniq:
    app = Soniq(database_url=url, db_schema=schema, poll_interval=30, concurrency=2)

    @app.job(name="ping")
    async def ping(n: int) -> int:
        return n

    @app.job(name="boom", retries=0)
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


# -- names -----------------------------------------------------------------------------------------
def test_names_per_schema() -> None:
    default, public, alpha, beta = names(None), names("public"), names("alpha"), names("beta")
    assert default.jobs == "soniq_jobs" and default.schema is None
    assert public.jobs == '"public".soniq_jobs' and alpha.jobs == '"alpha".soniq_jobs'
    assert (default.jobs_channel, default.cancel_channel, default.queues_channel) == (
        DEFAULT_CHANNELS)
    # public is where the unset default lives: the two see each other's wake-ups and lock.
    assert (public.jobs_channel, public.cancel_channel, public.queues_channel) == (
        DEFAULT_CHANNELS)
    assert default.migration_lock_key == public.migration_lock_key == MIGRATION_LOCK_KEY
    assert (alpha.jobs_channel, alpha.cancel_channel) == ("alpha_soniq_jobs", "alpha_soniq_cancel")
    assert alpha.channels == {"alpha_soniq_jobs": "soniq_jobs", "alpha_soniq_cancel": "soniq_cancel",
                              "alpha_soniq_queues": "soniq_queues"}
    assert len({alpha.migration_lock_key, beta.migration_lock_key, MIGRATION_LOCK_KEY}) == 3
    assert sql.build("alpha") is sql.build("alpha"), "built once per schema"
    assert sql.build("alpha").claim_all_queues.count('"alpha".soniq_jobs') == 2


def test_a_63_byte_schema_gets_channels_within_63_bytes() -> None:
    near = "s" * 62 + "t"
    channels = [*names(LONGEST).channels, *names(near).channels]
    assert all(len(channel.encode()) <= 63 for channel in channels), channels
    assert len(set(channels)) == 6, "hashed channels of different schemas differ"
    short = "s" * 50  # 50 + len("_soniq_jobs") = 61: still the readable form
    assert names(short).jobs_channel == f"{short}_soniq_jobs"


@pytest.mark.parametrize("bad", ["Alpha", "al-pha", "a b", 'x"; DROP TABLE soniq_jobs; --',
                                 "pg_catalog", "1st", "s" * 64, "ünï"])
def test_an_unsafe_schema_name_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="db_schema") as caught:
        Soniq(database_url="postgresql://nobody@127.0.0.1:1/unused", db_schema=bad)
    assert repr(bad) in str(caught.value)


def test_sqlite_and_memory_refuse_db_schema(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"db_schema .*PostgreSQL setting.*sqlite"):
        Soniq(database_url=str(tmp_path / "x.db"), db_schema="alpha")
    with pytest.raises(ConfigurationError, match=r"db_schema .*PostgreSQL setting.*memory"):
        Soniq(backend="memory", db_schema="alpha")
    Soniq(backend="memory", db_schema="")  # empty (SONIQ_DB_SCHEMA=) means unset


# -- side by side ----------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.postgres
async def test_two_schemas_in_one_database_run_side_by_side(schemas_url: str) -> None:
    apps = {schema: _app(schemas_url, schema) for schema in (*SCHEMAS, None)}
    alpha, beta, default = apps["alpha"], apps["beta"], apps[None]
    try:
        async with (running_worker(alpha) as wa, running_worker(beta) as wb,
                    running_worker(default) as wd):
            workers = {"alpha": wa, "beta": wb, None: wd}
            for worker in workers.values():
                await wait_for(lambda w=worker: w.listener.connected, message="LISTEN")
            jobs = {schema: await app.enqueue("ping", args={"n": i})
                    for i, (schema, app) in enumerate(apps.items())}
            for schema, app in apps.items():  # woken by its own NOTIFY, run by its own worker
                record = await wait_for_status(app, jobs[schema], "done", timeout=10)
                assert record["worker_id"] == workers[schema].id
                assert [job["id"] for job in await app.list_jobs()] == [jobs[schema]]
                assert [w["id"] for w in await app.backend.list_workers()] == [
                    workers[schema].id]
                for other in apps:
                    if other != schema:
                        assert await app.get_job(jobs[other]) is None
            dead = await beta.enqueue("boom")
            await wait_for_status(beta, dead, "dead_letter", timeout=10)
        assert [job["id"] for job in await beta.dead_letter.list_jobs()] == [dead]
        assert await alpha.dead_letter.count() == await default.dead_letter.count() == 0
        assert await alpha.dead_letter.replay(dead) is False

        await alpha.scheduler.add("tick", every=60, target="ping", args={"n": 1})
        endpoint = await beta.webhooks.register("http://127.0.0.1:9/hook", allow_private=True)
        assert [s["name"] for s in await alpha.scheduler.list()] == ["tick"]
        assert await beta.scheduler.list() == await default.scheduler.list() == []
        assert [e["id"] for e in await beta.webhooks.list()] == [endpoint["id"]]
        assert await alpha.webhooks.list() == await default.webhooks.list() == []
        stats = {schema: await app.get_queue_stats() for schema, app in apps.items()}
        assert [s["total"] for s in stats["beta"]] == [2]  # ping and boom
        assert [s["total"] for s in stats["alpha"]] == [s["total"] for s in stats[None]] == [1]
        info = await alpha.database_info()
        assert info["pending_migrations"] == [] and info["applied_migrations"]
    finally:
        for app in apps.values():
            await app.close()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_a_wake_up_reaches_only_its_own_schema(schemas_url: str) -> None:
    """Each backend listens; a NOTIFY from an enqueue in one schema reaches that schema's
    listener only. Notifications arrive in commit order, so once a schema's own wake-up (sent
    after the others) has arrived, a stray one from another schema would have arrived before."""
    apps = {schema: Soniq(database_url=schemas_url, db_schema=schema, enqueue_validation="none")
            for schema in (*SCHEMAS, None)}
    heard: dict[str | None, list[tuple[str, str]]] = {schema: [] for schema in apps}
    try:
        async with anyio.create_task_group() as tg:
            for schema, app in apps.items():
                await tg.start(app.backend.listen,
                               lambda channel, payload, s=schema: heard[s].append((channel, payload)))
            for schema, app in apps.items():
                await app.enqueue("nobody.runs", queue=f"q_{schema}")
            for schema in apps:
                await wait_for(lambda s=schema: heard[s], message=f"{schema}'s wake-up")
            tg.cancel_scope.cancel()
        assert heard == {schema: [("soniq_jobs", f"q_{schema}")] for schema in apps}
    finally:
        for app in apps.values():
            await app.close()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_a_63_byte_schema_works_and_wakes_its_workers(pg_url: str) -> None:
    await anyio.to_thread.run_sync(_setup_schemas, pg_url, LONGEST)
    app = _app(pg_url, LONGEST)
    try:
        async with running_worker(app) as worker:
            await wait_for(lambda: worker.listener.connected, message="LISTEN")
            job = await app.enqueue("ping", args={"n": 7})
            record = await wait_for_status(app, job, "done", timeout=10)
        assert record["result"] == 7
    finally:
        await app.close()
        await anyio.to_thread.run_sync(_drop_schemas, pg_url, LONGEST)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_an_app_in_a_schema_not_set_up_is_told_to_run_setup(pg_url: str) -> None:
    backend = PostgresBackend(pg_url, load_settings({"database_url": pg_url,
                                                     "db_schema": "never_set_up"}))
    try:
        with pytest.raises(SchemaMissingError, match=r"schema never_set_up\) has no Soniq schema"):
            await backend.initialize()
    finally:
        await backend.close()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_a_pause_stays_in_its_schema(schemas_url: str) -> None:
    """Pausing "default" in alpha reaches alpha's worker (its own soniq_queues channel; the
    workers poll only every 30 s) and pauses nothing in beta; the audit rows stay apart too."""
    alpha, beta = _app(schemas_url, "alpha"), _app(schemas_url, "beta")
    try:
        async with running_worker(alpha) as wa, running_worker(beta) as wb:
            for worker in (wa, wb):
                await wait_for(lambda w=worker: w.listener.connected, message="LISTEN")
            assert await alpha.queues.pause("default") is True
            await wait_for(lambda: "default" in wa.fetcher.paused, timeout=5,
                           message="alpha's worker to hear of the pause")
            waiting = await alpha.enqueue("ping", args={"n": 1})
            ran = await beta.enqueue("ping", args={"n": 2})
            await wait_for_status(beta, ran, "done", timeout=10)
            assert wb.fetcher.paused == frozenset()
            assert (await alpha.get_job(waiting) or {}).get("status") == "queued"
            assert await alpha.queues.resume("default") is True
            await wait_for_status(alpha, waiting, "done", timeout=10)
        assert [(q.name, q.paused) for q in await beta.queues.list()] == [("default", False)]
        assert alpha.backend.audit is not None and beta.backend.audit is not None
        assert [e.action for e in await alpha.backend.audit.list(10)] == [
            "queue.resume", "queue.pause"]
        assert await beta.backend.audit.list(10) == []
    finally:
        for app in (alpha, beta):
            await app.close()
