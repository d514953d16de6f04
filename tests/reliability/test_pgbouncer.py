"""Soniq behind PgBouncer: a real ``pgbouncer`` (tests/reliability/pgbouncer.py) with a default
configuration between the workers, the producer and the shared test server.

Transaction pooling (``pool_mode = transaction``) is the mode that breaks sessions: it is
supported with ``statement_cache_size=0`` -- no prepared statements, no LISTEN (workers poll), no
startup parameter PgBouncer does not know, no session advisory lock -- and refused with the fix
when the statement cache is left on. Session pooling changes nothing. ``soniq doctor`` tells the
two apart.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from soniq import Soniq
from soniq.backends import _bridge
from soniq.backends.postgres.listener import APPLICATION_NAME
from soniq.errors import ConfigurationError
from soniq.migrations import load_migrations
from tests.cli.cli import clean_env, soniq
from tests.helpers import wait_for, wait_for_status
from tests.reliability.ledger import Ledger, assert_nothing_lost
from tests.reliability.pgbouncer import PgBouncer, database_of, free_port, running_pgbouncer
from tests.reliability.workers import Workers

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.chaos]

#: What a user behind transaction pooling sets (docs/guides/deployment.md).
NO_CACHE = {"SONIQ_STATEMENT_CACHE_SIZE": "0"}
FIX = "SONIQ_STATEMENT_CACHE_SIZE=0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the worker under test is a subprocess; trio paths are tested in-process


@pytest.fixture
async def bouncer(pg_url: str) -> AsyncIterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of the test's database."""
    async with running_pgbouncer(pg_url, [database_of(pg_url)]) as started:
        yield started


def producer(url: str, **settings: Any) -> Soniq:
    """An app for ``url`` that knows the chaos jobs the workers run."""
    from tests.apps import chaos

    app = Soniq(database_url=url, **settings)
    for spec in chaos.app.registry:
        app.registry.register(spec.func, name=spec.name, retries=spec.max_retries)
    return app


async def server_sessions(pg_url: str, query: str) -> int:
    """Sessions of the test's database on the server (asked directly) whose last statement
    matches ``query`` (a LIKE pattern)."""
    conn = await asyncpg.connect(pg_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query LIKE $1", query)
        return count
    finally:
        await conn.close()


def clean(output: str) -> None:
    assert "Traceback" not in output and " ERROR " not in output, output[-3000:]


@pytest.mark.anyio
async def test_enqueue_claim_and_finish_through_transaction_pooling(
        bouncer: PgBouncer, workers: Workers, ledger: Ledger) -> None:
    """Every enqueue path (one job, a batch by COPY, unique and keyed de-duplication, inside a
    borrowed connection's transaction) and a real worker's claims and finishes all work through
    transaction pooling with the statement cache off; nothing is lost or run twice."""
    app = producer(bouncer.url(), statement_cache_size=0)
    try:
        ids = [await app.enqueue("noop")]
        ids += await app.enqueue_many("nap", [{"ms": 1} for _ in range(200)])
        unique = await app.enqueue("sleep", args={"seconds": 0.01}, unique=True)
        assert await app.enqueue("sleep", args={"seconds": 0.01}, unique=True) == unique
        keyed = await app.enqueue("noop", dedup_key="pgbouncer-key")
        assert await app.enqueue("noop", dedup_key="pgbouncer-key") == keyed
        async with app.backend.acquire() as conn, conn.transaction():
            ids.append(await app.enqueue("noop", connection=conn))
        ids += [unique, keyed]
        assert len(set(ids)) == 204

        proc = workers.start("--concurrency", "8", url=bouncer.url(), **NO_CACHE)
        await assert_nothing_lost(app, ledger, ids, timeout=30)
        await workers.stop(proc)
        assert await app.backend.list_workers() == []
    finally:
        await app.close()
    output = workers.output(proc)
    assert f"127.0.0.1:{bouncer.port}/" in output.splitlines()[0]  # it went through PgBouncer
    clean(output)


@pytest.mark.anyio
async def test_listen_is_off_with_a_logged_reason_and_polling_picks_jobs_up(
        bouncer: PgBouncer, workers: Workers, ledger: Ledger, pg_url: str) -> None:
    """A worker in the transaction pooling mode holds no LISTEN connection and says why; a job
    enqueued by another process once it idles is still picked up within a poll interval."""
    poll = 0.5
    app = producer(bouncer.url(), statement_cache_size=0)
    try:
        proc = workers.start(url=bouncer.url(), SONIQ_POLL_INTERVAL=str(poll), **NO_CACHE)
        await wait_for(app.backend.list_workers, timeout=20, message="the worker to register")
        await wait_for(lambda: "LISTEN is off" in workers.output(proc), timeout=10,
                       message="the worker's reason for polling")
        output = workers.output(proc)
        assert f"polling every {poll:g}s" in output.splitlines()[0]
        [reason] = [line for line in output.splitlines() if "LISTEN is off" in line]
        assert "statement_cache_size=0" in reason and "PgBouncer" in reason, reason
        assert f"polling every {poll:g}s" in reason, reason
        assert await server_sessions(pg_url, "LISTEN%") == 0

        job_id = await app.enqueue("noop")  # no worker in this process to wake: only a poll can
        await wait_for_status(app, job_id, "done", timeout=poll + 3)
        await assert_nothing_lost(app, ledger, [job_id])
        await workers.stop(proc)
    finally:
        await app.close()
    clean(workers.output(proc))


@pytest.mark.anyio
async def test_prepared_statements_behind_transaction_pooling_are_refused_with_the_fix(
        bouncer: PgBouncer, workers: Workers) -> None:
    """With the statement cache left on, transaction pooling is detected when the pool opens:
    a clear error naming the setting, instead of prepared statements failing at random later."""
    app = producer(bouncer.url())
    try:
        with pytest.raises(ConfigurationError, match=FIX) as refused:
            await app.enqueue("noop")
        assert "transaction pooling" in refused.value.message
    finally:
        await app.close()
    proc = workers.start(url=bouncer.url())
    assert await workers.exit_code(proc) == 2
    output = workers.output(proc)
    assert FIX in output and "Traceback" not in output, output[-3000:]


@pytest.mark.anyio
async def test_doctor_reports_the_pgbouncer_mode(bouncer: PgBouncer) -> None:
    """``soniq doctor`` (a subprocess) through PgBouncer: the transaction pooling mode is found,
    passes with the statement cache off and fails, naming the fix, with it on."""
    def doctor(*args: str, **env: str) -> Any:
        return soniq("doctor", "--database-url", bouncer.url(), *args, env=clean_env(**env))

    # Each probe waits out doctor's LISTEN round trip (2 s) in vain: run them side by side.
    done: dict[str, Any] = {}

    async def run(key: str, *args: str, **env: str) -> None:
        done[key] = await anyio.to_thread.run_sync(lambda: doctor(*args, **env))

    async def facts() -> None:
        async with Soniq(database_url=bouncer.url(), statement_cache_size=0) as app:
            done["info"] = await app.database_info()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run("configured", "--json", **NO_CACHE))
        tg.start_soon(lambda: run("default"))
        tg.start_soon(facts)

    configured = done["configured"]
    assert configured.returncode == 0, configured.stdout + configured.stderr
    checks = {c["name"]: c for c in json.loads(configured.stdout)["checks"]}
    assert checks["pooling mode"]["verdict"] == "ok"
    assert "transaction pooling (PgBouncer" in checks["pooling mode"]["detail"]
    assert checks["LISTEN/NOTIFY"]["verdict"] == "skip"
    assert {c["verdict"] for c in checks.values()} <= {"ok", "skip"}, checks

    default = done["default"]
    assert default.returncode == 3, default.stdout + default.stderr
    assert "Traceback" not in default.stderr
    [line] = [line for line in default.stdout.splitlines() if "pooling mode" in line]
    assert "FAIL" in line and "transaction pooling" in line and FIX in line, default.stdout
    assert "some checks failed" in default.stdout

    info = done["info"]
    assert info["transaction_pooling"] is True and info["via_proxy"] is True
    assert info["listen_works"] is False and info["pending_migrations"] == []


@pytest.mark.anyio
async def test_setup_through_transaction_pooling(pg_server: str,
                                                 fresh_database: tuple[str, str]) -> None:
    """Two ``setup()`` runs at once through transaction pooling: one applies every migration,
    the other waits for it and finds nothing to do, and no advisory lock stays behind on
    PgBouncer's server connections. (A session lock taken through PgBouncer let both runs in at
    once: the second got the first's server connection, lock and all.)"""
    name, direct = fresh_database
    conn = await asyncpg.connect(pg_server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    labels = [m.label for m in load_migrations("postgres")]
    async with running_pgbouncer(pg_server, [name]) as pooled:
        apps = [Soniq(database_url=pooled.url(), statement_cache_size=0) for _ in range(2)]
        results: list[list[str]] = []

        async def setup(app: Soniq) -> None:
            results.append(await app.setup())

        try:
            async with anyio.create_task_group() as tg:
                for app in apps:
                    tg.start_soon(setup, app)
            assert sorted(results) == [[], labels]  # one run applied all, the other waited
            assert await apps[0].setup() == []
            assert (await apps[0].database_info())["pending_migrations"] == []
        finally:
            for app in apps:
                await app.close()
    conn = await asyncpg.connect(direct)
    try:
        assert await conn.fetchval("SELECT count(*) FROM soniq_migrations") == len(labels)
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                   "AND database = (SELECT oid FROM pg_database "
                                   "WHERE datname = current_database())") == 0
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_session_pooling_keeps_prepared_statements_and_listen(pg_url: str) -> None:
    """Behind PgBouncer in session mode, with the default settings: the pools open (the worker
    loops' planning setting is not a startup parameter PgBouncer would refuse) and a
    notification from another instance wakes an idle worker at once."""
    async with running_pgbouncer(pg_url, [database_of(pg_url)], pool_mode="session") as pooled:
        worker_app = Soniq(database_url=pooled.url(), poll_interval=30, pool_min_size=1)
        sender = Soniq(database_url=pooled.url(), poll_interval=30, pool_min_size=1)

        @worker_app.job(name="ping")
        async def ping(n: int) -> int:
            return n

        sender.registry.register(ping, name="ping")
        try:
            async with worker_app.running_worker() as worker:
                await wait_for(lambda: worker.listener.connected, message="LISTEN to be active")
                job_id = await sender.enqueue("ping", n=1)
                await wait_for_status(sender, job_id, "done", timeout=5)

            async def plan_cache_mode(pool: Any) -> str:
                async with pool.acquire() as conn:
                    return str(await conn.fetchval("SHOW plan_cache_mode"))

            loops = await worker_app.backend._loops()  # type: ignore[attr-defined]
            assert await _bridge.call(plan_cache_mode, loops) == "force_custom_plan"
            assert (await sender.database_info())["transaction_pooling"] is False
        finally:
            await sender.close()
            await worker_app.close()


async def listener_sessions(pg_url: str) -> int:
    """The server's LISTEN sessions (``soniq listener``) on the test's database, asked directly:
    PgBouncer's own server connections carry no such application_name."""
    conn = await asyncpg.connect(pg_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = $1", APPLICATION_NAME)
        return count
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_listen_url_wakes_a_worker_whose_claims_go_through_transaction_pooling(
        bouncer: PgBouncer, workers: Workers, ledger: Ledger, pg_url: str) -> None:
    """``database_url`` through PgBouncer in transaction mode (statement cache off), ``listen_url``
    straight to the server: the worker LISTENs on the direct connection, and a job enqueued
    through the pooler by another process (its NOTIFY delivered at commit) starts long before
    the 30 s poll interval could have elapsed: only the notification can have woken it."""
    poll = 30.0
    app = producer(bouncer.url(), statement_cache_size=0)
    try:
        proc = workers.start(url=bouncer.url(), SONIQ_POLL_INTERVAL=str(poll),
                             SONIQ_LISTEN_URL=pg_url, **NO_CACHE)
        await wait_for(app.backend.list_workers, timeout=20, message="the worker to register")
        await wait_for(lambda: listener_sessions(pg_url), timeout=10,
                       message="the LISTEN session on the server")
        first_line = workers.output(proc).splitlines()[0]
        assert f"127.0.0.1:{bouncer.port}/" in first_line  # claims go through PgBouncer
        assert "LISTEN/NOTIFY on listen_url" in first_line, first_line
        # Each job after the first is enqueued once the worker has finished the one before and
        # idles (its claim on the freed slot comes before the finish is written).
        ids = []
        for _ in range(3):
            ids.append(await app.enqueue("noop"))
            await wait_for_status(app, ids[-1], "done", timeout=5)
        await assert_nothing_lost(app, ledger, ids)
        await workers.stop(proc)
    finally:
        await app.close()
    output = workers.output(proc)
    assert "LISTEN is off" not in output and "LISTEN unavailable" not in output, output[-3000:]
    clean(output)


@pytest.mark.anyio
async def test_listen_url_through_transaction_pooling_is_refused(
        bouncer: PgBouncer, workers: Workers) -> None:
    """A ``listen_url`` that is itself the transaction pooler cannot hold a LISTEN session: the
    worker stops at once with a one-line error naming listen_url, instead of never waking."""
    proc = workers.start(url=bouncer.url(), SONIQ_LISTEN_URL=bouncer.url(), **NO_CACHE)
    assert await workers.exit_code(proc) == 2
    output = workers.output(proc)
    assert "Traceback" not in output, output[-3000:]
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    assert "listen_url" in line and "transaction pooling" in line, line


@pytest.mark.anyio
async def test_unreachable_listen_url_stops_the_worker(bouncer: PgBouncer, workers: Workers) -> None:
    """A ``listen_url`` nobody answers on is a configuration to fix, not a reason to poll
    quietly: one line naming it, exit code 1."""
    dead = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/nowhere"
    proc = workers.start(url=bouncer.url(), SONIQ_LISTEN_URL=dead, **NO_CACHE)
    assert await workers.exit_code(proc) == 1
    output = workers.output(proc)
    assert "Traceback" not in output and "hunter2" not in output, output[-3000:]
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    assert "/nowhere" in line, line


@pytest.mark.anyio
async def test_doctor_reports_the_listen_url(bouncer: PgBouncer, pg_url: str) -> None:
    """``soniq doctor`` through PgBouncer with listen_url: passes when it names the server
    directly (a NOTIFY sent through the pooler arrives there), fails naming it when it is the
    pooler itself."""
    def doctor(listen_url: str) -> Any:
        return soniq("doctor", "--database-url", bouncer.url(), "--json",
                     env=clean_env(SONIQ_LISTEN_URL=listen_url, **NO_CACHE))

    direct, pooled = await anyio.to_thread.run_sync(lambda: (doctor(pg_url), doctor(bouncer.url())))
    assert direct.returncode == 0, direct.stdout + direct.stderr
    checks = {c["name"]: c for c in json.loads(direct.stdout)["checks"]}
    assert checks["LISTEN/NOTIFY"]["verdict"] == "ok", checks
    assert "listen_url" in checks["LISTEN/NOTIFY"]["detail"]
    assert "LISTEN on listen_url" in checks["pooling mode"]["detail"]

    assert pooled.returncode == 3, pooled.stdout + pooled.stderr
    checks = {c["name"]: c for c in json.loads(pooled.stdout)["checks"]}
    assert checks["LISTEN/NOTIFY"]["verdict"] == "fail", checks
    assert "transaction pooling" in checks["LISTEN/NOTIFY"]["detail"]
