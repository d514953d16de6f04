"""A rolling deploy across real ``soniq worker`` processes on one PostgreSQL database: worker A
runs an older release (tests/apps/old_release.py, no chaos job), worker B the new one
(tests/apps/chaos.py). A never runs nor dead-letters B's jobs; alone, it leaves them waiting
until ``unknown_job_grace`` has passed, and only then are they dead-lettered."""

from __future__ import annotations

import pytest

from soniq import Soniq
from tests.helpers import wait_for, wait_for_status
from tests.reliability.ledger import Ledger, assert_nothing_lost
from tests.reliability.workers import Workers

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

OLD = "tests.apps.old_release:app"
LEFT = "is not registered on this worker"


async def _states(app: Soniq, ids: list[str]) -> set[tuple[str, int, int]]:
    found = set()
    for job_id in ids:
        record = await app.get_job(job_id)
        assert record is not None
        found.add((record["status"], record["attempts"], len(record["errors"])))
    return found


async def test_old_worker_leaves_new_jobs_to_the_new_worker(app: Soniq, workers: Workers,
                                                             ledger: Ledger) -> None:
    ids = await app.enqueue_many("noop", [{} for _ in range(100)])
    old = workers.start("--concurrency", "8", app=OLD)
    # A met the new job and left it (its log says so once); the jobs wait, untouched.
    await wait_for(lambda: LEFT in workers.output(old), timeout=30, message="A leaving 'noop'")
    await wait_for(lambda: _untouched(app, ids), timeout=10)
    assert workers.output(old).count(LEFT) == 1
    new = workers.start("--concurrency", "8")
    records = await assert_nothing_lost(app, ledger, ids, timeout=60)
    assert {(r["status"], r["attempts"], len(r["errors"])) for r in records.values()} == {
        ("done", 1, 0)}
    assert {entry.pid for entry in await ledger.entries()} == {new.pid}
    await workers.stop(old, new)
    assert workers.output(old).count(LEFT) == 1  # no spin: met once, then excluded


async def _untouched(app: Soniq, ids: list[str]) -> bool:
    return await _states(app, ids) == {("queued", 0, 0)}


async def test_alone_the_old_worker_dead_letters_them_only_after_the_grace(
        app: Soniq, workers: Workers) -> None:
    ids = await app.enqueue_many("noop", [{} for _ in range(5)])
    old = workers.start(app=OLD, SONIQ_UNKNOWN_JOB_GRACE="3600")
    await wait_for(lambda: LEFT in workers.output(old), timeout=30, message="A leaving 'noop'")
    await wait_for(lambda: _untouched(app, ids), timeout=10)
    await workers.stop(old)
    assert await _states(app, ids) == {("queued", 0, 0)}  # within the grace: left waiting
    short = workers.start(app=OLD, SONIQ_UNKNOWN_JOB_GRACE="1")
    for job_id in ids:
        record = await wait_for_status(app, job_id, "dead_letter", timeout=30)
        assert record["attempts"] == 0
        [error] = record["errors"]
        assert error["message"] == ("no live worker has registered job 'noop' for 1 s "
                                    "(unknown_job_grace)")
    await workers.stop(short)
