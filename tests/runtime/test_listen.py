"""LISTEN/NOTIFY wakes an idle PostgreSQL worker, and heals after its connection is killed.

The producer is a separate Soniq instance, so nothing in-process can wake the worker; with
``poll_interval`` at 30 s only a notification can start the job within the deadline.
"""

from __future__ import annotations

import anyio
import pytest

from soniq import Soniq
from soniq.backends.postgres.listener import APPLICATION_NAME
from tests.helpers import running_worker, wait_for, wait_for_status

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.mark.parametrize("listen_url", [False, True], ids=["database_url", "listen_url"])
async def test_notify_wakes_an_idle_worker_and_survives_a_killed_listener(
        pg_url: str, listen_url: bool) -> None:
    """With ``listen_url`` (here the same server, with the statement cache off as behind
    PgBouncer), the LISTEN connection is the listen_url's and heals the same way."""
    settings = {"listen_url": pg_url, "statement_cache_size": 0} if listen_url else {}
    worker_app = Soniq(database_url=pg_url, poll_interval=30, **settings)
    producer = Soniq(database_url=pg_url, poll_interval=30)

    @worker_app.job(name="ping")
    async def ping(n: int) -> int:
        return n

    @producer.job(name="ping")
    async def ping_stub(n: int) -> int:
        return n

    async with running_worker(worker_app) as worker:
        await wait_for(lambda: worker.listener.connected, message="LISTEN to be active")
        first = await producer.enqueue("ping", n=1)
        await wait_for_status(producer, first, "done", timeout=5)

        async with producer.backend.acquire() as conn:  # a proxy under trio, asyncpg's own on asyncio
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = $1", APPLICATION_NAME)
        assert killed >= 1
        await wait_for(lambda: worker.listener.reconnects >= 1, message="LISTEN to reconnect")
        second = await producer.enqueue("ping", n=2)
        await wait_for_status(producer, second, "done", timeout=5)
    await producer.close()
    await worker_app.close()


def test_listen_is_off_behind_pgbouncer_transaction_pooling(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, statement_cache_size=0)
    assert app.backend.supports_listen is False
    anyio.run(app.close)


def test_listen_url_turns_listen_on_in_the_transaction_pooling_mode(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, statement_cache_size=0, listen_url=pg_url)
    assert app.backend.supports_listen is True
    anyio.run(app.close)
