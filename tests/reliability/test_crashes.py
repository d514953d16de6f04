"""Crashes and signals: ``soniq worker`` as a real subprocess, killed, stopped and interrupted.

Each test ends with :func:`assert_nothing_lost`. The queue lives on SQLite or on the shared
PostgreSQL server; the ledger always on PostgreSQL.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio
import pytest

from soniq import Soniq
from tests.helpers import wait_for, wait_for_status
from tests.reliability.conftest import ON_SQLITE_AND_POSTGRES
from tests.reliability.ledger import Ledger, assert_nothing_lost
from tests.reliability.workers import ROOT, Workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres, pytest.mark.chaos,
              ON_SQLITE_AND_POSTGRES]


async def drain(app: Soniq, pool: Workers, ledger: Ledger, ids: list[str], **options: Any) -> None:
    """Run one more worker until everything is final, stop it, check the invariants."""
    proc = pool.start()
    await assert_nothing_lost(app, ledger, ids, **options)
    await pool.stop(proc)
    assert await app.backend.list_workers() == []


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
async def test_sigterm_drains_running_jobs_claims_nothing_new_and_exits_0(
        app: Soniq, pool: Workers, ledger: Ledger, loop: str) -> None:
    job_id = await app.enqueue("sleep", seconds=1.0)
    proc = pool.start("--loop", loop, "--concurrency", "1")
    await ledger.starts(1)
    later = [await app.enqueue("noop") for _ in range(3)]
    proc.send_signal(signal.SIGTERM)
    assert await pool.exit_code(proc) == 0
    record = await app.get_job(job_id)
    assert record is not None and (record["status"], record["attempts"]) == ("done", 1)
    assert [e.event for e in await ledger.entries()] == ["start", "finish"]
    for other in later:  # claimed ahead perhaps, but given back unstarted, attempt refunded
        assert (await app.get_job(other) or {}).get("attempts") == 0
    assert await app.backend.list_workers() == []
    banner = pool.output(proc).splitlines()[0]
    assert f"storage {app.backend.name}" in banner and "concurrency 1" in banner
    assert ("LISTEN" in banner) == (app.backend.name == "postgres")
    await drain(app, pool, ledger, [job_id, *later])


async def test_run_once_runs_what_is_due_in_the_named_queues_and_exits(
        app: Soniq, pool: Workers, ledger: Ledger) -> None:
    ids = [await app.enqueue("noop", queue=q) for q in ("a", "b", "a")]
    env = dict(pool.env, SONIQ_JOBS_MODULES="tests.apps.chaos")
    done = await anyio.run_process(
        [sys.executable, "-m", "soniq", "worker", "--run-once", "--queues", "a"],
        cwd=ROOT, env=env, check=False)
    assert done.returncode == 0, done.stderr
    statuses = [(await app.get_job(i) or {}).get("status") for i in ids]
    assert statuses == ["done", "queued", "done"]
    await drain(app, pool, ledger, ids)


async def test_sigterm_past_the_grace_period_requeues_without_an_attempt(
        app: Soniq, pool: Workers, ledger: Ledger) -> None:
    job_id = await app.enqueue("sleep", seconds=60)
    proc = pool.start(SONIQ_SHUTDOWN_TIMEOUT="0.3")
    await ledger.starts(1)
    proc.send_signal(signal.SIGTERM)  # grace 0.3 s, then the job is cancelled and given back
    assert await pool.exit_code(proc, timeout=10) == 0
    record = await app.get_job(job_id)
    assert record is not None and (record["status"], record["attempts"]) == ("queued", 0)
    assert await app.cancel_job(job_id)
    await assert_nothing_lost(app, ledger, [job_id], refunded=frozenset({job_id}))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_second_signal_stops_at_once_and_gives_the_job_back(
        app: Soniq, pool: Workers, ledger: Ledger, signum: signal.Signals, code: int) -> None:
    job_id = await app.enqueue("sleep", seconds=60)
    proc = pool.start()
    await ledger.starts(1)
    proc.send_signal(signum)
    await wait_for(lambda: "finishing running jobs" in pool.output(proc), timeout=10,
                   message="the first signal to be handled")
    proc.send_signal(signum)
    assert await pool.exit_code(proc, timeout=5) == code
    record = await app.get_job(job_id)
    assert record is not None and (record["status"], record["attempts"]) == ("queued", 0)
    assert await app.cancel_job(job_id)
    await assert_nothing_lost(app, ledger, [job_id], refunded=frozenset({job_id}))


async def test_a_burst_of_signals_is_one_clean_shutdown(
        app: Soniq, pool: Workers, ledger: Ledger) -> None:
    job_id = await app.enqueue("sleep", seconds=1.0)
    proc = pool.start()
    await ledger.starts(1)
    for _ in range(5):  # five SIGTERMs within half a second
        proc.send_signal(signal.SIGTERM)
        await anyio.sleep(0.1)
    code = await pool.exit_code(proc)
    output = pool.output(proc)
    assert "Traceback" not in output
    # The second signal of the burst means "stop now": the job goes back unfinished (143), or
    # the burst arrived while the drain was already done (0). Either way nothing is lost.
    assert code in (0, 143), output
    await drain(app, pool, ledger, [job_id])


async def test_sigkill_mid_job_is_rerun_once_by_another_worker(
        app: Soniq, pool: Workers, ledger: Ledger) -> None:
    job_id = await app.enqueue("sleep", seconds=0.5)
    first = pool.start()
    [start] = await ledger.starts(1)
    first.kill()
    await pool.exit_code(first)
    second = pool.start()
    record = await wait_for_status(app, job_id, "done", timeout=30)
    assert record["attempts"] == 2
    assert [e["type"] for e in record["errors"]] == ["WorkerLost"]
    runs = await ledger.entries()
    assert [(e.attempt, e.event) for e in runs] == [(1, "start"), (2, "start"), (2, "finish")]
    assert runs[0].pid == first.pid and runs[1].pid == second.pid
    # the dead worker's row is gone (removed by the live worker's cleanup)
    workers = await wait_for(lambda: _only(app, second.pid), timeout=10,
                             message="only the live worker registered")
    assert workers
    await assert_nothing_lost(app, ledger, [job_id])
    await pool.stop(second)


async def _only(app: Soniq, pid: int) -> bool:
    return [w["pid"] for w in await app.backend.list_workers()] == [pid]


async def test_a_job_that_kills_its_worker_ends_in_dead_letter(
        app: Soniq, pool: Workers, ledger: Ledger) -> None:
    poison = await app.enqueue("suicide")
    normal = [await app.enqueue("noop") for _ in range(20)]

    async def supervise() -> None:  # restarts the worker every time it dies, like systemd would
        while True:
            proc = pool.start("--concurrency", "1")
            await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(supervise)
        records = await assert_nothing_lost(app, ledger, [poison, *normal], timeout=90)
        tg.cancel_scope.cancel()
    pool.stop_all()
    assert records[poison]["status"] == "dead_letter"
    assert records[poison]["attempts"] == 3
    assert [e["type"] for e in records[poison]["errors"]] == ["WorkerLost"] * 3
    assert [e.attempt for e in await ledger.entries() if e.job_id == poison] == [1, 2, 3]
    assert all(records[n]["status"] == "done" for n in normal)


async def test_a_zombie_worker_is_fenced_out(app: Soniq, pool: Workers, ledger: Ledger) -> None:
    job_id = await app.enqueue("sleep", seconds=3)
    zombie = pool.start()
    [first] = await ledger.starts(1)
    zombie.send_signal(signal.SIGSTOP)  # no heartbeats, no progress: it looks dead
    try:
        rescuer = pool.start()
        await ledger.starts(2)  # rescued and started again by the live worker
    finally:
        zombie.send_signal(signal.SIGCONT)
    # The zombie wakes up, finishes its (long overdue) run and tries to record it: refused.
    await wait_for(lambda: "lease lost" in pool.output(zombie), timeout=20,
                   message="the zombie's outcome to be refused")
    record = await wait_for_status(app, job_id, "done", timeout=20)
    runs = await ledger.entries()
    second = next(e for e in runs if e.event == "start" and e.lease_id != first.lease_id)
    assert second.pid == rescuer.pid and record["attempts"] == 2
    finishes = [e for e in runs if e.event == "finish"]
    assert sorted(e.pid for e in finishes) == sorted([zombie.pid, rescuer.pid])
    assert [e["type"] for e in record["errors"]] == ["WorkerLost"]
    await assert_nothing_lost(app, ledger, [job_id], overlap_allowed=frozenset({job_id}))
    await pool.stop(zombie, rescuer)

