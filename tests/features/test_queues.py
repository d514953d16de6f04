"""Queue control (``app.queues``) on every backend under asyncio and trio: settings stored and
listed, bad input refused before anything is written, every change audited (and visible to
another instance), a paused queue skipped by the claim while its running job finishes, a pause
or resume from another instance seen by a running worker within its bound."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from soniq import Soniq
from soniq.errors import InvalidNameError, ValidationError
from soniq.types import QueueInfo
from tests.helpers import running_worker, wait_for, wait_for_status

pytestmark = pytest.mark.anyio

#: How soon a running worker sees a change made elsewhere: NOTIFY on PostgreSQL (and memory's
#: in-process one), the next poll on SQLite (the ``app`` fixture polls every 0.05 s).
SEEN_WITHIN = {"memory": 1.0, "sqlite": 1.0, "postgres": 1.0}


@pytest.fixture
async def other(app: Soniq, backend_name: str, database_url: str | None) -> AsyncIterator[Soniq]:
    """A second instance on the same storage: another process would be the same (memory: the
    same backend object, the only way to share it)."""
    second = Soniq(backend=app.backend) if database_url is None else Soniq(
        database_url=database_url, poll_interval=0.05)
    try:
        yield second
    finally:
        if database_url is not None:
            await second.close()


def _states(queues: list[QueueInfo]) -> list[tuple[str, bool, int | None, str | None, int]]:
    return [(q.name, q.paused, q.concurrency_limit, q.rate_limit, q.queued) for q in queues]


async def test_settings_are_stored_listed_and_audited(app: Soniq) -> None:
    @app.job(name="queues.noop", queue="mail")
    async def noop() -> None:
        return None

    assert await app.queues.list() == []
    await app.enqueue(noop)
    assert await app.queues.pause("mail") is True
    assert await app.queues.pause("mail") is False  # already paused: not applied, still audited
    assert await app.queues.pause("reports", actor="ops:ada") is True  # no jobs yet: stored
    assert await app.queues.resume("never-paused") is False  # nothing stored
    assert await app.queues.set_concurrency_limit("mail", 3) is True
    assert await app.queues.set_rate_limit("mail", " 20 / s ") is True  # stored as 20/s
    assert await app.queues.set_rate_limit("mail", "20/s") is False
    assert _states(await app.queues.list()) == [
        ("mail", True, 3, "20/s", 1), ("reports", True, None, None, 0)]
    [mail, _] = await app.queues.list()
    assert (mail.total, mail.processing, mail.done, mail.dead_letter, mail.cancelled) == (
        1, 0, 0, 0, 0)
    assert await app.queues.resume("mail") is True
    assert await app.queues.set_concurrency_limit("mail", None) is True
    assert await app.queues.set_rate_limit("mail", None) is True
    assert _states(await app.queues.list()) == [
        ("mail", False, None, None, 1), ("reports", True, None, None, 0)]

    assert app.backend.audit is not None
    audit = await app.backend.audit.list(100)
    assert [(e.action, e.targets, e.outcome, e.actor) for e in reversed(audit)] == [
        ("queue.pause", ("mail",), "ok", "api"),
        ("queue.pause", ("mail",), "not_applied", "api"),
        ("queue.pause", ("reports",), "ok", "ops:ada"),
        ("queue.resume", ("never-paused",), "not_applied", "api"),
        ("queue.concurrency_limit", ("mail",), "ok", "api"),
        ("queue.rate_limit", ("mail",), "ok", "api"),
        ("queue.rate_limit", ("mail",), "not_applied", "api"),
        ("queue.resume", ("mail",), "ok", "api"),
        ("queue.concurrency_limit", ("mail",), "ok", "api"),
        ("queue.rate_limit", ("mail",), "ok", "api"),
    ]
    assert audit[-5].detail == "limit=3" and audit[-6].detail == "rate=20/s"
    assert all(e.at.utcoffset() is not None and e.client is None for e in audit)
    assert [e.action for e in await app.backend.audit.list(2)] == [
        "queue.rate_limit", "queue.concurrency_limit"]


@pytest.mark.parametrize(("call", "named"), [
    (lambda q: q.set_concurrency_limit("mail", 0), "got 0"),
    (lambda q: q.set_concurrency_limit("mail", -2), "got -2"),
    (lambda q: q.set_concurrency_limit("mail", True), "got True"),
    (lambda q: q.set_concurrency_limit("mail", 1.5), "got 1.5"),
    (lambda q: q.set_rate_limit("mail", "20/d"), "'20/d'"),
    (lambda q: q.set_rate_limit("mail", "0/s"), "'0/s'"),
    (lambda q: q.set_rate_limit("mail", "-1/s"), "'-1/s'"),
    (lambda q: q.set_rate_limit("mail", "fast"), "'fast'"),
    (lambda q: q.set_rate_limit("mail", 20), "got 20"),
    (lambda q: q.pause("no spaces"), "'no spaces'"),
    (lambda q: q.resume(""), "''"),
    (lambda q: q.pause("mail", actor=""), "got ''"),
])
async def test_bad_input_is_refused_before_anything_is_written(app: Soniq, call: object,
                                                               named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        await call(app.queues)  # type: ignore[operator]
    assert await app.queues.list() == []
    assert app.backend.audit is not None and await app.backend.audit.list(10) == []


async def test_an_invalid_name_is_an_invalid_name_error(app: Soniq) -> None:
    with pytest.raises(InvalidNameError, match="queue name"):
        await app.queues.set_rate_limit("a/b", "1/s")


async def test_a_paused_queue_is_skipped_its_running_job_finishes_and_resume_drains(
        app: Soniq) -> None:
    release = anyio.Event()
    started: list[str] = []

    @app.job(name="queues.slow", queue="slow")
    async def slow(tag: str) -> str:
        started.append(tag)
        if tag == "running":
            await release.wait()
        return tag

    @app.job(name="queues.fast", queue="fast")
    async def fast() -> None:
        return None

    async with running_worker(app, concurrency=4):
        running = await app.enqueue(slow, tag="running")
        await wait_for(lambda: started == ["running"], message="the slow job to start")
        assert await app.queues.pause("slow") is True
        waiting = [await app.enqueue(slow, tag=f"waiting-{i}") for i in range(3)]  # accepted
        # Jobs of another queue enqueued after the pause run: claims happen, and skip "slow".
        for job_id in [await app.enqueue(fast) for _ in range(3)]:
            await wait_for_status(app, job_id, "done")
        release.set()
        await wait_for_status(app, running, "done")  # the running job finished normally
        for job_id in [await app.enqueue(fast) for _ in range(2)]:
            await wait_for_status(app, job_id, "done")
        assert [(await app.get_job(j) or {}).get("status") for j in waiting] == ["queued"] * 3
        assert started == ["running"]
        assert await app.queues.resume("slow") is True
        for job_id in waiting:
            await wait_for_status(app, job_id, "done")


async def test_a_worker_of_only_paused_queues_claims_nothing(app: Soniq) -> None:
    @app.job(name="queues.only", queue="only")
    async def only() -> None:
        return None

    assert await app.queues.pause("only") is True
    job_id = await app.enqueue(only)
    async with running_worker(app, queues=["only"]) as worker:
        await wait_for(lambda: "only" in worker.fetcher.paused, message="the worker to read it")
        assert worker.processed == 0
        await app.queues.resume("only")
        await wait_for_status(app, job_id, "done")


async def test_a_change_from_another_instance_reaches_a_running_worker(
        app: Soniq, other: Soniq, backend_name: str) -> None:
    @app.job(name="queues.remote", queue="remote")
    async def remote() -> None:
        return None

    @app.job(name="queues.local", queue="local")
    async def local() -> None:
        return None

    bound = SEEN_WITHIN[backend_name]
    async with running_worker(app, concurrency=2) as worker:
        assert await other.queues.pause("remote", actor="elsewhere") is True
        await wait_for(lambda: "remote" in worker.fetcher.paused, timeout=bound,
                       message=f"the pause to reach the worker within {bound}s")
        parked = await app.enqueue(remote)
        await wait_for_status(app, await app.enqueue(local), "done")  # a claim after the pause
        assert (await app.get_job(parked) or {}).get("status") == "queued"
        assert await other.queues.resume("remote") is True
        await wait_for(lambda: "remote" not in worker.fetcher.paused, timeout=bound,
                       message=f"the resume to reach the worker within {bound}s")
        await wait_for_status(app, parked, "done")
    assert app.backend.audit is not None
    [latest, earlier] = (await app.backend.audit.list(2))
    assert (latest.action, earlier.action, earlier.actor) == (
        "queue.resume", "queue.pause", "elsewhere")


async def test_settings_outlive_the_instance_that_wrote_them(
        app: Soniq, other: Soniq, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("memory: nothing outlives its process")
    await app.queues.pause("kept")
    await app.queues.set_rate_limit("kept", "5/h")
    await app.close()
    assert _states(await other.queues.list()) == [("kept", True, None, "5/h", 0)]


async def test_app_sync_queues(app: Soniq) -> None:
    def use() -> list[QueueInfo]:
        assert app.sync.queues.pause("blocking", actor="script") is True
        assert app.sync.queues.set_concurrency_limit("blocking", 2) is True
        assert app.sync.queues.set_rate_limit("blocking", "1/m") is True
        assert app.sync.queues.resume("blocking") is True
        return app.sync.queues.list()

    try:
        found = await anyio.to_thread.run_sync(use)
    finally:
        await anyio.to_thread.run_sync(app.sync.close)
    assert _states(found) == [("blocking", False, 2, "1/m", 0)]
    assert _states(await app.queues.list()) == [("blocking", False, 2, "1/m", 0)]
