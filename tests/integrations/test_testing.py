"""soniq.testing and its pytest plugin, used the way a user's test suite would use them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from soniq import JobContext, Soniq
from soniq.errors import SerializationError, ValidationError
from soniq.testing import (
    InlineJobError,
    assert_enqueued,
    drain,
    refute_enqueued,
    testing_mode,
    wait_for_status,
)

pytestmark = pytest.mark.anyio


def register(app: Soniq) -> dict[str, object]:
    """Jobs on ``app``; returns the functions by name."""
    seen: list[object] = []

    @app.job(name="send_welcome", queue="emails")
    async def send_welcome(email: str, tags: list[str] | None = None) -> str:
        seen.append(tags)
        return f"sent to {email}"

    @app.job(name="explode", retries=0)
    def explode(ctx: JobContext) -> None:
        raise RuntimeError(f"boom on attempt {ctx.attempt}")

    return {"send_welcome": send_welcome, "explode": explode, "seen": seen}


async def test_manual_mode_is_the_default_and_drain_runs_what_is_due(soniq_app: Soniq) -> None:
    jobs = register(soniq_app)
    first = await soniq_app.enqueue(jobs["send_welcome"], email="ada@example.com")
    second = await soniq_app.enqueue("send_welcome", email="bob@example.com")
    later = await soniq_app.schedule(jobs["send_welcome"], 3600, email="later@example.com")
    assert (await soniq_app.get_job(first))["status"] == "queued"  # nothing ran yet

    ran = await drain(soniq_app)

    assert [r["id"] for r in ran] == [first, second]
    assert [r["status"] for r in ran] == ["done", "done"]
    assert ran[0]["result"] == "sent to ada@example.com"
    assert (await soniq_app.get_job(later))["status"] == "queued"  # not due: left alone
    assert await drain(soniq_app) == []


@pytest.mark.soniq(mode="inline")
async def test_inline_mode_runs_the_job_before_enqueue_returns(soniq_app: Soniq) -> None:
    jobs = register(soniq_app)
    job_id = await soniq_app.enqueue(jobs["send_welcome"], email="ada@example.com", tags=("a", "b"))
    record = await soniq_app.get_job(job_id)
    assert record["status"] == "done"
    assert record["result"] == "sent to ada@example.com"
    assert jobs["seen"] == [["a", "b"]]  # a real JSON round trip: the tuple arrives as a list


@pytest.mark.soniq(mode="inline")
async def test_inline_mode_refuses_arguments_json_cannot_hold(soniq_app: Soniq) -> None:
    jobs = register(soniq_app)
    with pytest.raises((SerializationError, ValidationError)):
        await soniq_app.enqueue(jobs["send_welcome"], email="ada@example.com",
                                tags=[datetime.now(UTC).date()])
    await refute_enqueued(soniq_app)


async def test_inline_mode_with_raise_errors_surfaces_the_failure(soniq_app: Soniq) -> None:
    jobs = register(soniq_app)
    with testing_mode(soniq_app, "inline", raise_errors=True):
        with pytest.raises(InlineJobError, match="boom on attempt 1"):
            await soniq_app.enqueue(jobs["explode"])
        ids = await soniq_app.enqueue_many(jobs["send_welcome"],
                                           [{"email": "a@x.org"}, {"email": "b@x.org"}])
        assert [(await soniq_app.get_job(i))["status"] for i in ids] == ["done", "done"]
    # back in manual mode: enqueue only stores
    job_id = await soniq_app.enqueue(jobs["send_welcome"], email="c@x.org")
    assert (await soniq_app.get_job(job_id))["status"] == "queued"
    assert "enqueue" not in vars(soniq_app)


async def test_assert_and_refute_enqueued(soniq_app: Soniq) -> None:
    jobs = register(soniq_app)
    await soniq_app.enqueue(jobs["send_welcome"], email="ada@example.com", tags=("x",))
    await soniq_app.enqueue(jobs["send_welcome"], email="bob@example.com", queue="bulk")

    [match] = await assert_enqueued(soniq_app, jobs["send_welcome"],
                                    args={"email": "ada@example.com", "tags": ("x",)})
    assert match["queue"] == "emails"
    await assert_enqueued(soniq_app, "send_welcome", count=2)
    await assert_enqueued(soniq_app, jobs["send_welcome"], queue="bulk", status="queued")
    await refute_enqueued(soniq_app, jobs["explode"])
    await refute_enqueued(soniq_app, jobs["send_welcome"], args={"email": "eve@example.com"})

    with pytest.raises(AssertionError, match="found none; stored jobs: send_welcome"):
        await assert_enqueued(soniq_app, jobs["send_welcome"], args={"email": "eve@example.com"})
    with pytest.raises(AssertionError, match="expected 1 job"):
        await assert_enqueued(soniq_app, jobs["send_welcome"], count=1)
    with pytest.raises(AssertionError, match="expected no job with job='send_welcome'"):
        await refute_enqueued(soniq_app, jobs["send_welcome"], queue="bulk")


async def test_wait_for_status_follows_a_running_worker(soniq_app: Soniq) -> None:
    jobs = register(soniq_app)
    async with soniq_app.running_worker():
        ok = await soniq_app.enqueue(jobs["send_welcome"], email="ada@example.com")
        bad = await soniq_app.enqueue(jobs["explode"])
        assert (await wait_for_status(soniq_app, ok, "done"))["result"] == "sent to ada@example.com"
        record = await wait_for_status(soniq_app, bad)  # any final status
        assert record["status"] == "dead_letter"


async def test_wait_for_status_fails_with_what_it_last_saw(soniq_app: Soniq) -> None:
    jobs = register(soniq_app)
    job_id = await soniq_app.enqueue(jobs["send_welcome"], email="ada@example.com")
    with pytest.raises(AssertionError, match=r"did not reach done within 0.05s \(status 'queued'\)"):
        await wait_for_status(soniq_app, job_id, "done", timeout=0.05)
    with pytest.raises(ValueError, match="unknown status"):
        await wait_for_status(soniq_app, job_id, "finished")


@pytest.mark.soniq(backend="sqlite", mode="inline")
async def test_the_marker_picks_sqlite(soniq_app: Soniq) -> None:
    assert soniq_app.backend.name == "sqlite"
    jobs = register(soniq_app)
    job_id = await soniq_app.enqueue(jobs["send_welcome"], email="ada@example.com")
    assert (await soniq_app.get_job(job_id))["status"] == "done"


@pytest.mark.postgres
@pytest.mark.soniq(backend="postgres")
async def test_the_marker_picks_postgres(soniq_app: Soniq) -> None:
    assert soniq_app.backend.name == "postgres"
    jobs = register(soniq_app)
    await refute_enqueued(soniq_app)  # the fixture emptied the tables
    job_id = await soniq_app.enqueue(jobs["send_welcome"], email="ada@example.com")
    [ran] = await drain(soniq_app)
    assert ran["id"] == job_id and ran["status"] == "done"


@pytest.mark.postgres
async def test_the_fixture_empties_the_tables_of_the_apps_db_schema(pg_url: str) -> None:
    """With db_schema, the soniq_app fixture empties that schema's tables, not the default's."""
    from soniq.testing.plugin import _empty_tables
    from tests.helpers import on_connection

    default = Soniq(database_url=pg_url, enqueue_validation="none")
    app = Soniq(database_url=pg_url, db_schema="plugin_schema", enqueue_validation="none")
    try:
        await app.setup()
        kept = await default.enqueue("some.job")
        await app.enqueue("some.job")
        await _empty_tables(app)
        assert await app.list_jobs() == []
        assert [job["id"] for job in await default.list_jobs()] == [kept]
    finally:
        await app.close()
        await default.close()
        await on_connection(pg_url, lambda conn: conn.execute(
            "DROP SCHEMA IF EXISTS plugin_schema CASCADE"))


@pytest.mark.soniq(backend="sqlite")
def test_sync_tests_can_use_the_fixture_through_app_sync(soniq_app: Soniq) -> None:
    register(soniq_app)
    job_id = soniq_app.sync.enqueue("send_welcome", email="ada@example.com")
    assert soniq_app.sync.get_job(job_id)["status"] == "queued"
