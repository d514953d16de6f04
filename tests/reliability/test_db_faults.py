"""Database faults under real worker processes: the server restarted or crashed under load, the
LISTEN connection killed or left half-open, connections cut between a statement's commit and its
answer, a pool too small for its callers.

Restarts use a private cluster (tests/reliability/cluster.py); the rest go through the fault proxy
(tests/reliability/proxy.py) to the shared server. The ledger is on the shared server throughout.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from soniq import Soniq
from soniq.backends.postgres.listener import APPLICATION_NAME
from soniq.errors import SoniqError
from tests.helpers import wait_for, wait_for_status
from tests.reliability.cluster import PrivateCluster
from tests.reliability.conftest import chaos_app
from tests.reliability.ledger import Ledger, assert_nothing_lost
from tests.reliability.proxy import Proxy
from tests.reliability.workers import Workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres, pytest.mark.chaos]

#: Polling so slow that a pickup within seconds proves LISTEN/NOTIFY delivered the wake-up.
NO_POLLING = {"SONIQ_POLL_INTERVAL": "60"}


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[Proxy]:
    parts = urlsplit(pg_url)
    fault = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    async with anyio.create_task_group() as tg:
        await tg.start(fault.serve)
        yield fault
        tg.cancel_scope.cancel()


def through(proxy: Proxy, pg_url: str) -> str:
    return proxy.url(urlsplit(pg_url).path.lstrip("/"))


async def listening(url: str) -> None:
    """Wait until a worker's LISTEN connection is open on the database."""
    async def check() -> bool:
        conn = await asyncpg.connect(url)
        try:
            return bool(await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = $1",
                APPLICATION_NAME))
        finally:
            await conn.close()

    await wait_for(check, timeout=30, interval=0.1, message="a LISTEN session")


async def picked_up_without_polling(app: Soniq) -> str:
    """A job enqueued now runs within seconds although workers poll once a minute; its id."""
    job_id = await app.enqueue("noop")
    await wait_for_status(app, job_id, "done", timeout=10)
    return job_id


async def test_restart_and_crash_of_the_server_under_load_lose_nothing(
        cluster: PrivateCluster, workers: Workers, ledger: Ledger) -> None:
    url = cluster.url("soniq")
    producer = chaos_app(url)
    # No rescue during the outage (silent heartbeats are the outage, not dead workers).
    env = {**NO_POLLING, "SONIQ_HEARTBEAT_TIMEOUT": "60"}
    procs = [workers.start("--concurrency", "8", url=url, **env) for _ in range(2)]
    # Both up before the first outage: a worker still starting when the server goes down
    # exits at once (by design), which is not what this test is about.
    async def both_registered() -> bool:
        return len(await producer.backend.list_workers()) == 2

    await wait_for(both_registered, timeout=60, message="both workers to register")
    committed: list[str] = []
    refused: list[SoniqError] = []
    rng = random.Random(7)

    async def produce(stop: anyio.Event) -> None:
        while not stop.is_set():
            try:
                with anyio.fail_after(15):  # an outage gives an error, never a hang
                    committed.append(await producer.enqueue("nap", ms=rng.uniform(5, 50)))
            except SoniqError as exc:
                refused.append(exc)
                await anyio.sleep(0.1)
            await anyio.sleep(0.01)

    try:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, stop)
            await wait_for(lambda: len(committed) >= 100, timeout=30, message="load")
            await anyio.to_thread.run_sync(cluster.restart, "fast")
            await wait_for(lambda: len(committed) >= 250, timeout=60, message="load after restart")
            await anyio.to_thread.run_sync(cluster.restart, "immediate")  # crash recovery
            await wait_for(lambda: len(committed) >= 400, timeout=60, message="load after crash")
            stop.set()
        assert refused, "the outages went unnoticed: the test did not test anything"
        await assert_nothing_lost(producer, ledger, committed, timeout=90,
                                  ambiguous=len(refused))
        assert all(proc.poll() is None for proc in procs), "a worker died with the server"
        await listening(url)
        await picked_up_without_polling(producer)
        assert workers.output().count("LISTEN reconnected") >= 4  # each worker, each outage
        await workers.stop(*procs)
    finally:
        await producer.close()


async def test_killed_listen_connection_resumes_wake_ups(
        app: Soniq, pg_url: str, workers: Workers, ledger: Ledger) -> None:
    proc = workers.start(**NO_POLLING)
    await listening(pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = $1", APPLICATION_NAME)
    finally:
        await conn.close()
    assert killed == 1
    gap = [await app.enqueue("noop") for _ in range(10)]  # while the listener reconnects
    await assert_nothing_lost(app, ledger, gap, timeout=20)
    await wait_for(lambda: "LISTEN reconnected" in workers.output(proc), timeout=10,
                   message="the listener to reconnect")
    await picked_up_without_polling(app)
    await workers.stop(proc)


async def test_half_open_listen_connection_is_detected_and_replaced(
        app: Soniq, pg_url: str, proxy: Proxy, workers: Workers, ledger: Ledger) -> None:
    proc = workers.start(url=through(proxy, pg_url), **NO_POLLING)
    await listening(pg_url)
    # Past its first claim (which would take jobs enqueued early without any wake-up) and woken.
    probe = await picked_up_without_polling(app)
    assert proxy.blackhole(matching=b"LISTEN") == 1
    during = [await app.enqueue("noop") for _ in range(5)]  # their wake-ups go nowhere
    await wait_for(lambda: "stopped answering" in workers.output(proc), timeout=20,
                   message="the keepalive to notice the silent connection")
    # The new LISTEN connection claims what arrived meanwhile, then wake-ups flow again.
    await assert_nothing_lost(app, ledger, [probe, *during], timeout=20)
    await wait_for(lambda: "LISTEN reconnected" in workers.output(proc), timeout=10,
                   message="the listener to reconnect")
    await picked_up_without_polling(app)
    await workers.stop(proc)


@pytest.mark.parametrize(("where", "marker"), [
    ("claim", b"ORDER BY priority, scheduled_at, id"),  # the plain claim (not a gated one)
    ("finish", b"refund_attempt"),
])
async def test_connection_cut_between_commit_and_answer_loses_and_repeats_nothing(
        app: Soniq, pg_url: str, proxy: Proxy, workers: Workers, ledger: Ledger,
        where: str, marker: bytes) -> None:
    ids = await app.enqueue_many("nap", [{"ms": 1} for _ in range(20)])
    cut = proxy.cut_on(marker)  # the statement runs and commits; its answer is lost
    proc = workers.start(url=through(proxy, pg_url))
    with anyio.fail_after(20):
        await cut.fired.wait()
    records = await assert_nothing_lost(app, ledger, ids, timeout=30)
    assert all(r["attempts"] == 1 and r["status"] == "done" for r in records.values())
    starts = await ledger.entries("start")
    assert len(starts) == len({e.job_id for e in starts}) == len(ids)
    output = workers.output(proc)
    if where == "claim":  # the claimed jobs are taken up by the worker that claimed them
        assert "took up" in output
    else:  # the outcome is written again, refused, and recognised as already written
        assert "already written by an earlier attempt" in output
    assert "lease lost" not in output
    await workers.stop(proc)


async def test_an_exhausted_pool_makes_callers_wait_not_fail(pg_url: str) -> None:
    small = Soniq(database_url=pg_url, pool_min_size=1, pool_max_size=1,
                  enqueue_validation="none")
    try:
        ids: list[str] = []

        async def enqueue_and_read() -> None:
            job_id = await small.enqueue("tests.anything", args={"n": len(ids)})
            assert await small.get_job(job_id) is not None
            ids.append(job_id)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(enqueue_and_read)
        assert len(set(ids)) == 40
    finally:
        await small.close()
