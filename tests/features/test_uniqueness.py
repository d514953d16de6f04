"""Uniqueness with windows and debounce (``unique_by``, ``unique_for``, ``unique_while``,
``on_conflict``, ``max_delay``) on memory, SQLite and PostgreSQL, under asyncio and trio.

Time never passes in these tests: jobs that must not run are scheduled in the future, windows
are long, and pruning is asked with an explicit ``now``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from soniq import EnqueueOptions, Soniq
from soniq.errors import ValidationError
from soniq.ids import new_id
from soniq.serialization import loads, utc_now
from soniq.testing import drain

pytestmark = pytest.mark.anyio

HOUR = 3600.0
BY_USER = EnqueueOptions(unique_by=["user_id"], on_conflict="replace")


def register(app: Soniq, **options: Any) -> None:
    @app.job(name="sync_user", **options)
    async def sync_user(user_id: int, n: int = 0) -> None:
        return None


def loads_args(record: dict[str, Any]) -> dict[str, Any]:
    """A record's arguments (decoded by get_job/list_jobs; text if a backend left them so)."""
    args = record["args"]
    return loads(args) if isinstance(args, str) else dict(args)


async def rows(app: Soniq) -> list[dict[str, Any]]:
    return [dict(r) for r in await app.list_jobs(limit=1000)]


async def test_a_debounce_of_100_enqueues_leaves_one_job_with_the_last_arguments(
        app: Soniq) -> None:
    register(app)
    ids = [await app.enqueue("sync_user", user_id=7, n=n, scheduled_at=5 + n / 1000,
                             options=BY_USER) for n in range(100)]
    other = await app.enqueue("sync_user", user_id=8, scheduled_at=5, options=BY_USER)
    assert len(set(ids)) == 1 and other != ids[0]
    [job] = [r for r in await rows(app) if r["id"] == ids[0]]
    assert loads_args(job) == {"user_id": 7, "n": 99}
    assert job["status"] == "queued"
    # pushed back by every replace: the last call's time (5.099 s after its call)
    assert job["scheduled_at"] > job["created_at"] + timedelta(seconds=5.09)
    assert len(await rows(app)) == 2


async def test_max_delay_bounds_how_far_replaces_push_the_job(app: Soniq) -> None:
    register(app)
    options = EnqueueOptions(unique_by=["user_id"], on_conflict="replace", max_delay=60)
    first = await app.enqueue("sync_user", user_id=1, n=1, scheduled_at=10, options=options)
    again = await app.enqueue("sync_user", user_id=1, n=2, scheduled_at=HOUR, options=options)
    assert again == first
    job = await app.get_job(first)
    assert job is not None
    assert job["scheduled_at"] == job["created_at"] + timedelta(seconds=60)
    # within the bound a replace moves it (earlier too)
    await app.enqueue("sync_user", user_id=1, n=3, scheduled_at=20, options=options)
    job = await app.get_job(first)
    assert job is not None and job["scheduled_at"] < job["created_at"] + timedelta(seconds=21)


async def test_unique_for_refuses_after_the_job_finished_and_after_it_was_pruned(
        app: Soniq) -> None:
    register(app, unique_by=["user_id"], unique_for=HOUR)
    first = await app.enqueue("sync_user", user_id=1)
    assert [r["id"] for r in await drain(app)] == [first]
    assert await app.enqueue("sync_user", user_id=1, n=5) == first  # done, still in the window
    assert await app.enqueue("sync_user", user_id=2) != first  # another key
    # the row is pruned (result_ttl passed), the window is not
    later = utc_now() + timedelta(seconds=1800)
    assert await app.backend.prune_jobs(now=later) >= 1
    await app.backend.prune_control(audit_retention=0, now=later)
    assert await app.get_job(first) is None
    assert await app.enqueue("sync_user", user_id=1) == first
    assert [r for r in await rows(app) if loads_args(r)["user_id"] == 1] == []
    # once the window has passed the key is pruned, and a new job goes in
    await app.backend.prune_control(audit_retention=0, now=utc_now() + timedelta(hours=2))
    third = await app.enqueue("sync_user", user_id=1)
    assert third != first and (await app.get_job(third)) is not None


async def test_unique_while_processing_blocks_a_running_job_and_replace_never_changes_it(
        app: Soniq) -> None:
    register(app)
    running_blocks = EnqueueOptions(unique_by=["user_id"], unique_while=("queued", "processing"),
                                    on_conflict="replace")
    first = await app.enqueue("sync_user", user_id=1, n=1, options=running_blocks)
    [claimed] = await app.backend.claim_jobs(new_id(), None, 10)
    assert claimed.id == first
    # processing blocks: refused, the running job keeps its arguments
    assert await app.enqueue("sync_user", user_id=1, n=2, options=running_blocks) == first
    job = await app.get_job(first)
    assert job is not None and loads_args(dict(job)) == {"user_id": 1, "n": 1}
    assert len(await rows(app)) == 1
    # the default (queued only): a running job does not block, the new one is added
    second = await app.enqueue("sync_user", user_id=1, n=3, options=BY_USER)
    assert second != first
    # ... and now the queued one stands: keep returns it
    keep = EnqueueOptions(unique_by=["user_id"])
    assert await app.enqueue("sync_user", user_id=1, n=4, options=keep) == second
    job = await app.get_job(second)
    assert job is not None and loads_args(dict(job)) == {"user_id": 1, "n": 3}


async def test_plain_unique_still_holds_only_while_queued(app: Soniq) -> None:
    register(app, unique=True)
    first = await app.enqueue("sync_user", user_id=1)
    assert await app.enqueue("sync_user", user_id=1) == first
    assert await app.enqueue("sync_user", user_id=1, n=1) != first  # other arguments
    await app.backend.claim_jobs(new_id(), None, 10)
    assert await app.enqueue("sync_user", user_id=1) != first


async def test_enqueue_many_resolves_duplicates_in_order(app: Soniq) -> None:
    register(app, unique_by=["user_id"])
    standing = await app.enqueue("sync_user", user_id=9)
    ids = await app.enqueue_many("sync_user", [
        {"user_id": 1}, {"user_id": 2}, {"user_id": 1, "n": 1}, {"user_id": 9}, {"user_id": 2}])
    assert ids[0] == ids[2] and ids[1] == ids[4] and ids[3] == standing
    assert len({*ids}) == 3
    assert len(await rows(app)) == 3
    # replace within one call: the last arguments win, on a job of the call and a stored one
    replaced = await app.enqueue_many("sync_user", [
        {"user_id": 5, "n": 1}, {"user_id": 5, "n": 2}, {"user_id": 9, "n": 3}],
        scheduled_at=HOUR, options=BY_USER)
    assert replaced[0] == replaced[1] and replaced[2] == standing
    by_id = {r["id"]: loads_args(r) for r in await rows(app)}
    assert by_id[replaced[0]] == {"user_id": 5, "n": 2}
    assert by_id[standing] == {"user_id": 9, "n": 3}


async def test_enqueue_many_without_uniqueness_is_unchanged(app: Soniq) -> None:
    register(app)
    ids = await app.enqueue_many("sync_user", [{"user_id": 1}, {"user_id": 1}])
    assert len(set(ids)) == 2 and len(await rows(app)) == 2


@pytest.mark.parametrize(("options", "message"), [
    ({"unique_by": ["nope"]}, "unique_by of job 'sync_user' names 'nope'"),
    ({"unique_by": "user_id"}, "non-empty list of argument names"),
    ({"unique_while": ("done",)}, "unique_while of job 'sync_user' names 'done'"),
    ({"on_conflict": "merge"}, "on_conflict of job 'sync_user' must be 'keep' or 'replace'"),
    ({"on_conflict": "replace"}, "needs unique_by"),
    ({"max_delay": 5}, "max_delay on job 'sync_user' bounds on_conflict='replace'"),
    ({"unique_for": -1}, "unique_for of job 'sync_user' must be a number of seconds"),
    ({"unique_while": (), "unique_by": ["user_id"]}, "blocks nothing without unique_for"),
])
async def test_bad_uniqueness_is_refused_at_registration_and_at_enqueue(
        app: Soniq, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        register(app, **options)
    register(app)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        await app.enqueue("sync_user", user_id=1, options=EnqueueOptions(**options))
    assert await rows(app) == []


async def test_replace_with_a_dedup_key_needs_no_unique_by(app: Soniq) -> None:
    register(app)
    options = EnqueueOptions(on_conflict="replace")
    first = await app.enqueue("sync_user", user_id=1, dedup_key="k", scheduled_at=HOUR,
                              options=options)
    assert await app.enqueue("sync_user", user_id=2, dedup_key="k", scheduled_at=HOUR,
                             options=options) == first
    job = await app.get_job(first)
    assert job is not None and loads_args(dict(job))["user_id"] == 2


async def test_a_batch_of_a_unique_job_is_never_deduplicated(app: Soniq) -> None:
    register(app, unique_by=["user_id"])

    @app.job(name="batch_done")
    async def batch_done() -> None:
        return None

    standing = await app.enqueue("sync_user", user_id=1)
    await app.enqueue_batch("sync_user", [{"user_id": 1}, {"user_id": 1}], on_complete=batch_done)
    assert len(await rows(app)) == 4  # the standing job, two steps and the callback
    assert await app.enqueue("sync_user", user_id=1) == standing  # its key is untouched


async def test_pruning_keeps_the_key_of_a_job_that_has_not_finished(app: Soniq) -> None:
    register(app, unique_by=["user_id"], unique_for=60)
    first = await app.enqueue("sync_user", user_id=1, scheduled_at=HOUR)
    # the window has long passed, but the job still waits: its key still blocks
    await app.backend.prune_control(audit_retention=0, now=utc_now() + timedelta(hours=2))
    assert await app.enqueue("sync_user", user_id=1) == first
