"""The dead-letter queue (``app.dead_letter``) on every backend, under asyncio and trio."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

from soniq import Soniq
from soniq.errors import InvalidNameError, ValidationError
from soniq.features import DeadLetter
from soniq.types import JobRecord
from tests.helpers import running_worker, wait_for, wait_for_status

pytestmark = pytest.mark.anyio


class Switch:
    """Whether the registered jobs fail (they do until a test flips it)."""

    def __init__(self) -> None:
        self.fail = True


def register(app: Soniq) -> Switch:
    switch = Switch()

    @app.job(name="explode", retries=0)
    async def explode(n: int = 0) -> int:
        if switch.fail:
            raise RuntimeError(f"boom {n}")
        return n

    @app.job(name="fizzle", retries=0, queue="other")
    async def fizzle(n: int = 0) -> int:
        if switch.fail:
            raise ValueError(f"fizz {n}")
        return n

    @app.job(name="fine")
    async def fine() -> str:
        return "ok"

    return switch


async def dead(app: Soniq, name: str = "explode", count: int = 1, **options: Any) -> list[str]:
    """Enqueue ``count`` failing jobs and run them until they are dead-lettered."""
    ids = [await app.enqueue(name, n=n, **options) for n in range(count)]
    await app.run_worker(run_once=True)
    for job_id in ids:
        record = await app.get_job(job_id)
        assert record is not None and record["status"] == "dead_letter"
    return ids


def newest_first(records: list[JobRecord]) -> bool:
    keys = [(r["finished_at"], r["id"]) for r in records]
    return keys == sorted(keys, reverse=True)  # type: ignore[type-var]


async def test_touching_the_property_initialises_nothing() -> None:
    app = Soniq(backend="memory")
    dlq = app.dead_letter
    assert isinstance(dlq, DeadLetter) and app.dead_letter is dlq
    assert not app.is_initialized
    assert await dlq.count() == 0
    assert app.is_initialized
    await app.close()


async def test_list_get_count_and_filters(app: Soniq) -> None:
    register(app)
    boom = await dead(app, "explode", 3)
    fizz = await dead(app, "fizzle", 2)
    fine_id = await app.enqueue("fine")
    await app.run_worker(run_once=True)
    queued_id = await app.enqueue("explode", scheduled_at=timedelta(hours=1))
    dlq = app.dead_letter

    everything = await dlq.list_jobs()
    assert {r["id"] for r in everything} == {*boom, *fizz}
    assert all(r["status"] == "dead_letter" for r in everything)
    assert newest_first(everything)
    # The fizzle batch ran after the explode batch, so it is newer.
    assert {r["id"] for r in everything[:2]} == set(fizz)

    assert await dlq.count() == 5
    assert await dlq.count(queue="other") == 2
    assert await dlq.count(job_name="explode") == 3
    assert await dlq.count(queue="default", job_name="fizzle") == 0
    assert {r["id"] for r in await dlq.list_jobs(queue="other")} == set(fizz)
    assert {r["id"] for r in await dlq.list_jobs(job_name="explode")} == set(boom)
    assert await dlq.list_jobs(queue="nowhere") == []

    since = max(r["finished_at"] for r in everything if r["id"] in fizz)
    assert since is not None
    recent = await dlq.list_jobs(since=since)
    assert recent and all(r["finished_at"] is not None and r["finished_at"] >= since for r in recent)
    assert {r["id"] for r in await dlq.list_jobs(since=datetime.now(UTC) + timedelta(hours=1))} == set()
    # since in another zone means the same instant
    other_zone = since.astimezone(timezone(timedelta(hours=5)))
    assert [r["id"] for r in await dlq.list_jobs(since=other_zone)] == [r["id"] for r in recent]

    # pagination walks the same order without gaps or repeats
    pages = [await dlq.list_jobs(limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r["id"] for p in pages for r in p] == [r["id"] for r in everything]
    assert await dlq.list_jobs(offset=5) == []

    record = await dlq.get(boom[0])
    assert record is not None and record["id"] == boom[0]
    assert record["attempts"] == 1 and record["max_attempts"] == 1
    assert [e["type"] for e in record["errors"]] == ["RuntimeError"]
    assert record["errors"][0]["message"] == "boom 0" and "Traceback" in record["errors"][0]["traceback"]
    assert record["last_error"] == "RuntimeError: boom 0"
    assert await dlq.get(fine_id) is None  # done, not dead-lettered
    assert await dlq.get(queued_id) is None
    assert await dlq.get(str(uuid.uuid4())) is None


async def test_replay_runs_the_job_again_with_the_same_id(app: Soniq) -> None:
    switch = register(app)
    [job_id] = await dead(app)
    before = await app.get_job(job_id)
    assert before is not None
    dlq = app.dead_letter

    assert await dlq.replay(job_id) is True
    queued = await app.get_job(job_id)
    assert queued is not None
    assert queued["status"] == "queued" and queued["attempts"] == 0
    assert queued["finished_at"] is None and queued["expires_at"] is None
    assert queued["worker_id"] is None and queued["result"] is None
    assert queued["errors"] == before["errors"]  # history kept
    assert queued["scheduled_at"] >= before["scheduled_at"]
    assert await dlq.get(job_id) is None and await dlq.count() == 0
    assert await dlq.replay(job_id) is False  # queued now, not dead-lettered

    switch.fail = False
    assert await app.run_worker(run_once=True) == 1
    done = await app.get_job(job_id)
    assert done is not None
    assert (done["id"], done["status"], done["attempts"], done["result"]) == (job_id, "done", 1, 0)
    assert len(done["errors"]) == 1
    assert await dlq.replay(job_id) is False  # done


async def test_replay_then_fail_again_dead_letters_again(app: Soniq) -> None:
    register(app)
    [job_id] = await dead(app)
    assert await app.dead_letter.replay(job_id)
    await app.run_worker(run_once=True)
    record = await app.dead_letter.get(job_id)
    assert record is not None and record["attempts"] == 1
    assert [e["message"] for e in record["errors"]] == ["boom 0", "boom 0"]


async def test_replay_wakes_a_running_worker(backend_name: str, database_url: str | None) -> None:
    # A long poll interval: only a wake-up gets the job picked up within the deadline.
    app = Soniq(database_url=database_url, backend=backend_name if database_url is None else None,
                poll_interval=30.0, heartbeat_interval=0.1, heartbeat_timeout=2.0)
    try:
        switch = register(app)
        [job_id] = await dead(app)
        switch.fail = False
        async with running_worker(app):
            await anyio.sleep(0.1)  # let the worker's first fetch find nothing and start waiting
            assert await app.dead_letter.replay(job_id)
            await wait_for_status(app, job_id, "done", timeout=5)
    finally:
        await app.close()


async def test_replay_notifies_listeners(app: Soniq) -> None:
    register(app)
    ids = await dead(app, count=2) + await dead(app, "fizzle")
    await app.ensure_initialized()
    storage = app.backend
    if not storage.supports_listen:
        pytest.skip(f"{storage.name} has no LISTEN")
    received: list[tuple[str, str]] = []
    async with anyio.create_task_group() as tg:
        await tg.start(storage.listen, lambda channel, payload: received.append((channel, payload)))
        assert await app.dead_letter.replay(ids[0])
        await wait_for(lambda: ("soniq_jobs", "default") in received, timeout=5)
        assert await app.dead_letter.replay_many() == 2
        await wait_for(lambda: ("soniq_jobs", "other") in received, timeout=5)
        tg.cancel_scope.cancel()


async def test_replay_many_with_filters_and_limit(app: Soniq) -> None:
    register(app)
    boom = await dead(app, "explode", 3)
    fizz = await dead(app, "fizzle", 2)
    dlq = app.dead_letter

    assert await dlq.replay_many(queue="nowhere") == 0
    assert await dlq.replay_many(job_name="explode", limit=2) == 2
    assert await dlq.count(job_name="explode") == 1
    statuses = {job_id: (await app.get_job(job_id) or {}).get("status") for job_id in boom}
    assert sorted(statuses.values()) == ["dead_letter", "queued", "queued"]
    assert await dlq.replay_many(since=datetime.now(UTC) + timedelta(hours=1)) == 0
    assert await dlq.replay_many(queue="other") == 2
    for job_id in fizz:
        assert (await app.get_job(job_id) or {}).get("status") == "queued"
    assert await dlq.replay_many() == 1
    assert await dlq.count() == 0


async def test_delete_only_removes_dead_lettered_jobs(app: Soniq) -> None:
    register(app)
    [job_id, other] = await dead(app, count=2)
    queued_id = await app.enqueue("fine", scheduled_at=timedelta(hours=1))
    dlq = app.dead_letter

    assert await dlq.delete(job_id) is True
    assert await app.get_job(job_id) is None
    assert await dlq.delete(job_id) is False
    assert await dlq.delete(queued_id) is False
    assert await app.get_job(queued_id) is not None
    assert await dlq.delete(str(uuid.uuid4())) is False
    assert await dlq.count() == 1 and await dlq.get(other) is not None


async def test_purge_by_age_and_all(app: Soniq) -> None:
    register(app)
    ids = await dead(app, count=3)
    queued_id = await app.enqueue("fine", scheduled_at=timedelta(hours=1))
    dlq = app.dead_letter

    assert await dlq.purge(timedelta(hours=1)) == 0
    assert await dlq.purge(3600) == 0
    assert await dlq.purge(3600.5) == 0
    assert await dlq.purge(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert await dlq.count() == 3
    # Everything finished before a cutoff one second in the future.
    assert await dlq.purge(datetime.now(UTC) + timedelta(seconds=1)) == 3
    assert await dlq.count() == 0
    for job_id in ids:
        assert await app.get_job(job_id) is None
    more = await dead(app, count=2)
    assert await dlq.purge(0) == 2  # everything that finished before now
    assert await dlq.count() == 0 and all([await app.get_job(i) is None for i in more])
    await dead(app, count=2)
    assert await dlq.purge() == 2
    assert await dlq.purge() == 0
    assert await app.get_job(queued_id) is not None


async def test_export_yields_one_json_line_per_job(app: Soniq) -> None:
    register(app)
    boom = await dead(app, "explode", 3)
    fizz = await dead(app, "fizzle", 1)
    dlq = app.dead_letter

    lines = [line async for line in dlq.export()]
    assert all("\n" not in line for line in lines)
    parsed = [json.loads(line) for line in lines]
    listed = await dlq.list_jobs()
    assert [p["id"] for p in parsed] == [r["id"] for r in listed]
    assert {p["id"] for p in parsed} == {*boom, *fizz}
    first = parsed[0]
    assert first["status"] == "dead_letter" and first["errors"][0]["type"] in ("RuntimeError", "ValueError")
    for key in ("scheduled_at", "created_at", "updated_at", "finished_at"):
        assert datetime.fromisoformat(first[key]) == listed[0][key]  # type: ignore[literal-required]
    assert [json.loads(line)["id"] async for line in dlq.export(queue="other")] == fizz
    assert len([line async for line in dlq.export(job_name="explode", limit=2)]) == 2
    assert [line async for line in dlq.export(queue="nowhere")] == []


async def test_export_pages_through_large_queues(app: Soniq, monkeypatch: pytest.MonkeyPatch) -> None:
    import soniq.features.dead_letter as module

    monkeypatch.setattr(module, "EXPORT_PAGE_SIZE", 2)
    register(app)
    ids = await dead(app, count=5)
    exported = [json.loads(line)["id"] async for line in app.dead_letter.export()]
    assert sorted(exported) == sorted(ids) and len(exported) == 5
    assert len([line async for line in app.dead_letter.export(limit=3)]) == 3


@pytest.mark.parametrize("bad_id", ["nope", "", "123", 123, None, "not-a-uuid-at-all-xxxxxxxxxxxx"])
async def test_malformed_ids_are_not_found(app: Soniq, bad_id: Any) -> None:
    dlq = app.dead_letter
    assert await dlq.get(bad_id) is None
    assert await dlq.replay(bad_id) is False
    assert await dlq.delete(bad_id) is False


async def test_bad_input_raises_typed_errors(app: Soniq) -> None:
    dlq = app.dead_letter
    naive = datetime.now()  # naive on purpose: it must be refused
    with pytest.raises(InvalidNameError):
        await dlq.list_jobs(queue="bad queue")
    with pytest.raises(InvalidNameError):
        await dlq.count(job_name="../etc")
    with pytest.raises(InvalidNameError):
        await dlq.replay_many(queue="")
    for kwargs in ({"limit": 0}, {"limit": -1}, {"limit": True}, {"limit": "5"}, {"offset": -1},
                   {"since": naive}, {"since": "2024-01-01"}):
        with pytest.raises(ValidationError):
            await dlq.list_jobs(**kwargs)
    with pytest.raises(ValidationError):
        await dlq.replay_many(limit=0)
    with pytest.raises(ValidationError):
        await dlq.replay_many(since=naive)
    for older_than in (naive, -1, timedelta(seconds=-1), "1h", True, float("nan"), float("inf"), 1e300):
        with pytest.raises(ValidationError):
            await dlq.purge(older_than)
    with pytest.raises(ValidationError):
        [line async for line in dlq.export(limit=0)]
    with pytest.raises(InvalidNameError):
        [line async for line in dlq.export(queue="no spaces")]
    assert not app.is_initialized  # refused before any I/O
