"""Job logs (``app.logs``) on every backend, under asyncio and trio: capture through
``ctx.logger`` and any stdlib logger, routing between apps, search filters, removal with the job."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from soniq import JobContext, Soniq
from soniq.errors import ValidationError
from soniq.features.logs import JobLogs, LogFlushService, capture_installed
from tests.helpers import running_worker, wait_for_status

pytestmark = pytest.mark.anyio


def _root_capture_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if type(h).__name__ == "_CaptureHandler"]


def register(app: Soniq) -> None:
    """Turn capture on (touch ``app.logs``) and register the test jobs."""
    app.logs  # noqa: B018
    @app.job(name="chatty", retries=0)
    async def chatty(ctx: JobContext, n: int = 0) -> int:
        ctx.logger.info("hello from the job %d", n)
        logging.getLogger("some.lib").warning("library says %s", "careful")
        logging.getLogger("some.lib").debug("below the threshold")
        return n

    @app.job(name="sync_chatty", retries=0)
    def sync_chatty(ctx: JobContext) -> None:
        logging.getLogger("some.lib").error("from a thread")

    @app.job(name="boom", retries=0)
    async def boom(ctx: JobContext) -> None:
        try:
            raise ValueError("bad input")
        except ValueError:
            ctx.logger.exception("it broke")
        raise RuntimeError("fail")


async def run(app: Soniq, name: str, **args: object) -> str:
    job_id = await app.enqueue(name, **args)
    async with running_worker(app, concurrency=2):
        await wait_for_status(app, job_id, "done", "dead_letter")
    return job_id


async def test_for_job_returns_ctx_logger_and_stdlib_records_in_order(app: Soniq) -> None:
    register(app)
    logs = app.logs
    before = datetime.now(UTC)
    job_id = await run(app, "chatty", n=7)
    records = await logs.for_job(job_id)
    assert [(r.level, r.logger, r.message) for r in records] == [
        ("INFO", "soniq.jobs.chatty", "hello from the job 7"),
        ("WARNING", "some.lib", "library says careful"),
    ]
    first, second = records
    assert first.job_id == job_id and first.job_name == "chatty" and first.queue == "default"
    assert first.attempt == 1 and first.exception is None
    assert before - timedelta(seconds=1) <= first.created_at <= second.created_at
    assert first.created_at.tzinfo is not None
    assert first.id is not None and second.id is not None and first.id < second.id


async def test_sync_jobs_and_exceptions_are_captured(app: Soniq) -> None:
    register(app)
    sync_id = await run(app, "sync_chatty")
    boom_id = await run(app, "boom")
    [record] = await app.logs.for_job(sync_id)
    assert (record.level, record.message) == ("ERROR", "from a thread")
    boom = await app.logs.for_job(boom_id)
    assert [r.message for r in boom] == ["it broke"]
    assert boom[0].exception is not None and "ValueError: bad input" in boom[0].exception


async def test_the_flush_service_writes_without_a_read(app: Soniq) -> None:
    register(app)
    logs = app.logs
    job_id = await app.enqueue("chatty", n=1)
    async with running_worker(app):
        await wait_for_status(app, job_id, "done")
        with anyio.fail_after(5):
            while logs.pending:
                await anyio.sleep(0.05)
    assert len(await logs.store.for_job(job_id)) == 2


async def test_search_logs_filters(app: Soniq) -> None:
    register(app)
    one = await run(app, "chatty", n=1)
    two = await run(app, "chatty", n=2)
    logs = app.logs
    found = await logs.search_logs("HELLO FROM")
    assert [r.message for r in found] == ["hello from the job 2", "hello from the job 1"]
    assert [r.job_id for r in await logs.search_logs("hello", job_id=one)] == [one]
    warnings = await logs.search_logs(None, level="WARNING")
    assert {r.job_id for r in warnings} == {one, two}
    assert all(r.levelno >= logging.WARNING for r in warnings)
    assert len(await logs.search_logs("", limit=3)) == 3
    assert len(await logs.search_logs()) == 4
    assert await logs.search_logs("nothing like this") == []
    assert await logs.search_logs(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(await logs.search_logs(since=timedelta(minutes=5))) == 4
    # Beyond what datetime can represent: everything back, or nothing ahead (no OverflowError).
    assert len(await logs.search_logs(since=timedelta.max)) == 4
    assert await logs.search_logs(since=timedelta.min) == []
    assert await logs.search_logs(job_id="not-a-uuid") == []
    with pytest.raises(ValidationError):
        await logs.search_logs(level="LOUD")
    with pytest.raises(ValidationError):
        await logs.search_logs(limit=0)


async def test_logs_go_away_with_the_job(app: Soniq) -> None:
    register(app)
    kept = await run(app, "chatty", n=1)
    deleted = await run(app, "chatty", n=2)
    pruned = await run(app, "chatty", n=3)
    dead = await run(app, "boom")
    assert len(await app.logs.for_job(deleted)) == 2
    assert await app.delete_job(deleted)
    assert await app.logs.for_job(deleted) == []
    assert await app.dead_letter.delete(dead)
    assert await app.logs.for_job(dead) == []
    await app.backend.prune_jobs(now=datetime.now(UTC) + timedelta(days=1))
    assert await app.logs.for_job(pruned) == []
    assert await app.logs.for_job(kept) == []  # pruned too (result_ttl passed)
    assert await app.logs.search_logs() == []


async def test_two_apps_in_one_process_keep_their_own_logs(
        backend_name: str, database_url: str | None, tmp_path: object) -> None:
    if backend_name == "postgres":
        url_a = url_b = database_url
    elif backend_name == "sqlite":
        url_a, url_b = f"{tmp_path}/a.db", f"{tmp_path}/b.db"
    else:
        url_a = url_b = None
    kwargs = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "heartbeat_timeout": 2.0}
    a = Soniq(database_url=url_a, backend=backend_name if url_a is None else None,
              **kwargs)  # type: ignore[arg-type]
    b = Soniq(database_url=url_b, backend=backend_name if url_b is None else None,
              capture_job_logs=True, **kwargs)  # type: ignore[arg-type]
    try:
        a.logs  # noqa: B018 -- a captures because it was touched, b because of the setting
        for app, tag in ((a, "A"), (b, "B")):
            @app.job(name=f"job_{tag}", queue=tag.lower())
            async def job(ctx: JobContext, i: int, tag: str = tag) -> None:
                for step in range(3):
                    logging.getLogger("shared.lib").info("%s %d step %d", tag, i, step)
                    await anyio.sleep(0.001)

        ids_a = [await a.enqueue("job_A", i=i) for i in range(5)]
        ids_b = [await b.enqueue("job_B", i=i) for i in range(5)]
        async with running_worker(a, concurrency=5, queues=["a"]), \
                running_worker(b, concurrency=5, queues=["b"]):
            for job_id in ids_a:
                await wait_for_status(a, job_id, "done")
            for job_id in ids_b:
                await wait_for_status(b, job_id, "done")
        for app, ids, tag, other in ((a, ids_a, "A", "B"), (b, ids_b, "B", "A")):
            for i, job_id in enumerate(ids):
                assert [r.message for r in await app.logs.for_job(job_id)] == [
                    f"{tag} {i} step {step}" for step in range(3)]
            everything = await app.logs.search_logs(limit=1000)
            mine = [r for r in everything if r.job_id in ids]
            assert len(mine) == 15
            assert not [r for r in mine if r.message.startswith(other)]
        if backend_name != "postgres":  # one database each: nothing of the other app at all
            assert len(await a.logs.search_logs(limit=1000)) == 15
            assert len(await b.logs.search_logs(limit=1000)) == 15
    finally:
        await a.close()
        await b.close()


async def test_records_outside_jobs_are_not_captured(app: Soniq) -> None:
    logs = app.logs
    logging.getLogger("some.lib").warning("not in a job")
    assert logs.pending == 0


async def test_level_threshold_setting(backend_name: str, database_url: str | None) -> None:
    app = Soniq(database_url=database_url, backend=backend_name if database_url is None else None,
                job_log_level="warning", poll_interval=0.05, heartbeat_interval=0.1,
                heartbeat_timeout=2.0)
    try:
        register(app)
        job_id = await run(app, "chatty", n=1)
        assert [r.level for r in await app.logs.for_job(job_id)] == ["WARNING"]
    finally:
        await app.close()


async def test_bounded_buffer_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    from soniq.backends.memory import MemoryBackend
    from soniq.runtime.executor import current_job
    from soniq.types import JobContext as Ctx

    logs = JobLogs(MemoryBackend(), buffer_size=3)
    ctx = Ctx(job_id="x", job_name="n", attempt=1, max_attempts=1, queue="q", worker_id="w",
              scheduled_at=datetime.now(UTC), created_at=datetime.now(UTC),
              logger=logging.getLogger("t"))
    token = current_job.set(ctx)
    try:
        for i in range(5):
            logs._capture(logging.LogRecord("t", logging.INFO, __file__, 1, "m%d", (i,), None), ctx)
    finally:
        current_job.reset(token)
    assert logs.pending == 3 and logs.dropped == 2
    assert "dropping the oldest" in caplog.text
    assert [r.message for r in logs._buffer] == ["m2", "m3", "m4"]


async def test_nothing_is_installed_until_asked(backend_name: str, database_url: str | None) -> None:
    assert not capture_installed() and not _root_capture_handlers()
    app = Soniq(database_url=database_url, backend=backend_name if database_url is None else None)
    try:
        assert not app.events.active
        assert app.hooks.empty
        assert not any(isinstance(s, LogFlushService) for s in app.services)
        assert not capture_installed() and not _root_capture_handlers()
        app.logs  # noqa: B018
        assert capture_installed() and len(_root_capture_handlers()) == 1
        assert any(isinstance(s, LogFlushService) for s in app.services)
    finally:
        await app.close()
    assert not capture_installed() and not _root_capture_handlers()


async def test_capture_setting_installs_at_construction() -> None:
    app = Soniq(backend="memory", capture_job_logs=True)
    try:
        assert capture_installed() and app.logs.installed
    finally:
        await app.close()
    assert not capture_installed()
