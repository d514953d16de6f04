"""Housekeeping on PostgreSQL under a short ``statement_timeout`` set on the database (issue #26,
finding 8): the worker's ``ANALYZE`` when it starts and pruning run in transactions that set their
own timeout (``maintenance_statement_timeout``, transaction-local), so the worker starts and
pruning deletes.

A statement that outlasts the database's timeout is made deterministic with a lock: another
connection holds a table lock the maintenance statement needs, and the test waits until that
statement has been waiting for several times the database's timeout before releasing it. Under
the database's timeout it would have been cancelled long before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import pytest

from soniq import Soniq
from soniq.backends import _bridge
from soniq.backends.postgres import sql
from soniq.serialization import utc_now
from tests.conftest import _admin
from tests.helpers import on_connection, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

#: The database's statement_timeout: far above any ordinary statement of the worker here.
DB_TIMEOUT = timedelta(milliseconds=200)
JOBS = 1100  # more rows changed than the 1 000 that make a worker analyze soniq_jobs


@pytest.fixture
async def url(fresh_database: tuple[str, str]) -> str:
    """A migrated database of this test's own with ``statement_timeout`` = DB_TIMEOUT, and
    autovacuum off on soniq_jobs (it must not analyze the table before the worker does)."""
    name, database_url = fresh_database
    app = Soniq(database_url=database_url)
    try:
        await app.setup()
    finally:
        await app.close()
    await on_connection(database_url, lambda conn: conn.execute(
        "ALTER TABLE soniq_jobs SET (autovacuum_enabled = false)"))
    await _bridge.call(_admin, f"ALTER DATABASE \"{name}\" SET statement_timeout = "
                               f"'{int(DB_TIMEOUT.total_seconds() * 1000)}ms'")
    return database_url


async def waiting(url: str, query: str) -> bool:
    """Whether a statement like ``query`` waits on a lock for over three times DB_TIMEOUT."""
    return bool(await on_connection(url, lambda conn: conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE $1::text AND wait_event_type = 'Lock' "
        "AND clock_timestamp() - query_start > $2::interval", query, 3 * DB_TIMEOUT)))


@pytest.fixture
async def locker(url: str) -> AsyncIterator[Soniq]:
    """An app whose borrowed connection holds the locks."""
    soniq = Soniq(database_url=url, pool_min_size=1, pool_max_size=1)
    try:
        yield soniq
    finally:
        await soniq.close()


async def test_a_worker_starts_and_pruning_deletes_under_a_short_statement_timeout(
        url: str, locker: Soniq) -> None:
    async with Soniq(database_url=url, enqueue_validation="none") as producer:
        await producer.enqueue_many("ping", [{} for _ in range(JOBS)])
    await wait_for(lambda: on_connection(url, lambda conn: conn.fetchval(sql.build(None).statistics_stale)),
                   message="the inserts to reach the statistics")  # a closed session's flush

    app = Soniq(database_url=url, poll_interval=0.05, heartbeat_interval=0.1,
                heartbeat_timeout=2.0)
    ran: list[int] = []

    @app.job(name="ping")
    async def ping() -> None:
        ran.append(1)

    stop = anyio.Event()

    async def serve() -> None:
        async with app.running_worker():
            await stop.wait()

    try:
        async with anyio.create_task_group() as tg:
            async with locker.backend.acquire() as conn, conn.transaction():
                # ANALYZE needs this lock: it waits, past the database's timeout.
                await conn.execute("LOCK TABLE soniq_jobs IN SHARE UPDATE EXCLUSIVE MODE")
                tg.start_soon(serve)
                await wait_for(lambda: waiting(url, "ANALYZE soniq_jobs"),
                               message="the worker's ANALYZE to outlast the database's timeout")
            await wait_for(lambda: len(ran) == JOBS, message="the worker to run every job")
            stop.set()
        analyzed = await on_connection(url, lambda conn: conn.fetchval(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'soniq_jobs'"))
        assert analyzed is not None

        pruned: list[int] = []

        async def prune() -> None:
            pruned.append(await app.backend.prune_jobs(now=utc_now() + timedelta(hours=1)))

        async with (anyio.create_task_group() as tg, locker.backend.acquire() as conn,
                    conn.transaction()):
            await conn.execute("LOCK TABLE soniq_jobs IN SHARE MODE")  # blocks every DELETE
            tg.start_soon(prune)
            await wait_for(lambda: waiting(url, "%DELETE FROM soniq_jobs%"),
                           message="the prune to outlast the database's timeout")
        assert pruned == [JOBS]
        assert await on_connection(url, lambda conn: conn.fetchval(
            "SELECT count(*) FROM soniq_jobs")) == 0
    finally:
        await app.close()


async def test_the_maintenance_timeout_is_transaction_local(url: str, locker: Soniq) -> None:
    """Nothing stays on the session (PgBouncer's transaction pooling hands it to others)."""
    from soniq.backends.postgres.maintenance import maintenance, timeout_setting

    await locker.ensure_initialized()
    pool: Any = await locker.backend._ready()  # type: ignore[attr-defined]

    async def timeouts() -> tuple[str, str]:
        async with maintenance(pool, timeout_setting(60)) as conn:
            inside = await conn.fetchval("SHOW statement_timeout")
        async with pool.acquire() as conn:
            return inside, await conn.fetchval("SHOW statement_timeout")

    assert await _bridge.call(timeouts) == ("1min", "200ms")
