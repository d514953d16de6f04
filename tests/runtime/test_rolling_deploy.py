"""Rolling deploys, on every backend under asyncio and trio: a worker never runs or dead-letters
a job whose name it did not register, and does not spin on it; the job runs on a worker that
knows it; the cleanup dead-letters it only when no live worker (nor a worker started within
``unknown_job_grace``) registered its name, the job having been due that long."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from soniq import Soniq
from tests.helpers import running_worker, wait_for, wait_for_status

pytestmark = pytest.mark.anyio

NEW = "deploy.new_job"  # the job a new release adds; old workers do not register it


def _old_release(app: Soniq, **settings: Any) -> Soniq:
    """Worker A: the same database, an older release that does not register ``NEW``."""
    old = Soniq(backend=app.backend, **settings)

    @old.job(name="deploy.old_job")
    async def old_job() -> None: ...

    return old


def _count_claims(app: Soniq) -> dict[str, list[list[str]]]:
    """Per worker id, the job names each of its claims returned (the shared backend's
    ``claim_jobs`` wrapped)."""
    backend = app.backend
    real = backend.claim_jobs
    claims: dict[str, list[list[str]]] = {}

    async def counting(worker_id: str, *args: Any, **kwargs: Any) -> Any:
        claimed = await real(worker_id, *args, **kwargs)
        claims.setdefault(worker_id, []).append([job.job_name for job in claimed])
        return claimed

    backend.claim_jobs = counting  # type: ignore[method-assign]
    return claims


async def _states(app: Soniq, ids: list[str]) -> list[tuple[str, int, int]]:
    """(status, attempts, errors) of each job."""
    found = []
    for job_id in ids:
        record = await app.get_job(job_id)
        assert record is not None
        found.append((record["status"], record["attempts"], len(record["errors"])))
    return found


async def test_old_workers_leave_new_jobs_to_the_new_workers(app: Soniq) -> None:
    """Worker A (old: no ``NEW``) alone claims ``NEW``'s jobs once, gives them back untouched
    and then excludes the name (it keeps claiming, never them again); worker B (new) then runs
    all 100, each on its first attempt, none dead-lettered."""
    ran: list[int] = []

    @app.job(name=NEW)
    async def new_job(i: int) -> None:
        ran.append(i)

    old = _old_release(app, poll_interval=0.01)
    claims = _count_claims(app)
    ids = await app.enqueue_many(new_job, [{"i": i} for i in range(100)])
    async with running_worker(old, concurrency=4) as worker_a:
        # A's claims go on (it polls every 10 ms): wait for 20 of them, whatever the speed.
        await wait_for(lambda: len(claims.get(worker_a.id, [])) >= 20, timeout=20)
        met = [names for names in claims[worker_a.id] if NEW in names]
        assert len(met) == 1, claims[worker_a.id]  # met once, then excluded: no spin
        # What it claimed went back at once, the attempt refunded; nothing ran or failed.
        await wait_for(lambda: _all_waiting(app, ids), timeout=10)
        assert ran == []
        async with running_worker(app, concurrency=8):  # B starts: the deploy goes on
            for job_id in ids:
                await wait_for_status(app, job_id, "done", "dead_letter", timeout=30)
        assert all(NEW not in names for names in claims[worker_a.id][1:])
    assert sorted(ran) == list(range(100))
    assert set(await _states(app, ids)) == {("done", 1, 0)}


async def _all_waiting(app: Soniq, ids: list[str]) -> bool:
    return set(await _states(app, ids)) == {("queued", 0, 0)}


async def test_a_worker_that_registered_nothing_claims_and_leaves(app: Soniq) -> None:
    """``run_once`` on a worker that registered no job at all ends (it does not loop on what
    it cannot run) and leaves every job waiting, attempts untouched and in its place in the
    queue (``scheduled_at`` kept: its time due counts on for the grace)."""
    producer = Soniq(backend=app.backend, enqueue_validation="none")
    ids = [await producer.enqueue(NEW, args={"i": i}, scheduled_at=-i) for i in range(5)]
    due = [(await app.get_job(job_id) or {}).get("scheduled_at") for job_id in ids]
    assert await app.run_worker(run_once=True) == 0
    assert set(await _states(app, ids)) == {("queued", 0, 0)}
    assert [(await app.get_job(job_id) or {}).get("scheduled_at") for job_id in ids] == due


async def test_unknown_jobs_are_dead_lettered_after_the_grace(app: Soniq) -> None:
    """With only the old worker running (``unknown_job_grace`` shortened to 0.2 s), ``NEW``'s
    jobs are dead-lettered by the cleanup, attempts untouched, with the error saying why."""
    producer = Soniq(backend=app.backend, enqueue_validation="none")
    ids = [await producer.enqueue(NEW, args={"i": i}) for i in range(3)]
    old = _old_release(app, unknown_job_grace=0.2, cleanup_interval=0.05,
                       heartbeat_interval=0.1, heartbeat_timeout=2.0)
    async with running_worker(old):
        for job_id in ids:
            await wait_for_status(app, job_id, "dead_letter", timeout=20)
    for job_id in ids:
        record = await app.get_job(job_id)
        assert record is not None and record["attempts"] == 0
        [error] = record["errors"]
        assert error["type"] == "UnknownJob"
        assert error["message"] == (f"no live worker has registered job {NEW!r} for 0.2 s "
                                    "(unknown_job_grace)")


async def test_the_grace_counts_from_due_and_spares_names_a_worker_knows(app: Soniq) -> None:
    """Grace 1 h: dead-lettered only the job due for 2 h whose name nobody knows. Spared: the
    same name due now; a name the live worker registered (even in a queue it does not serve);
    a name registered by a worker that started within the grace and is gone now (a deploy's
    restart gap)."""
    gone = Soniq(backend=app.backend)

    @gone.job(name="deploy.restarted_job")
    async def restarted_job() -> None: ...

    async with running_worker(gone, queues=["unserved"]):
        pass  # it started (its definitions are stored) and stopped (its row is gone)

    producer = Soniq(backend=app.backend, enqueue_validation="none")
    past = timedelta(hours=-2)
    stale = await producer.enqueue(NEW, scheduled_at=past)
    fresh = await producer.enqueue(NEW)
    known = await producer.enqueue("deploy.old_job", queue="elsewhere", scheduled_at=past)
    restarted = await producer.enqueue("deploy.restarted_job", scheduled_at=past)

    old = _old_release(app, unknown_job_grace=3600, cleanup_interval=0.05,
                       heartbeat_interval=0.1, heartbeat_timeout=2.0)
    async with running_worker(old, queues=["default"]):
        record = await wait_for_status(app, stale, "dead_letter", timeout=20)
    assert "for 3600 s" in record["errors"][0]["message"]
    assert await _states(app, [fresh, known, restarted]) == [("queued", 0, 0)] * 3
    assert await app.backend.dead_letter_unknown(["deploy.old_job"], grace=3600) == [restarted]
