"""What workers stored is read back on every backend under asyncio and trio: producers that
enqueue a job name they have not registered take its defaults from the stored definition (cached
for ``definitions_cache_ttl`` seconds, on an injectable clock), and
``app.definitions.coverage()`` counts the live workers that know each name."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio.to_thread
import pytest

from soniq import Soniq, TaskRef
from soniq.backends.stores import JobDefinition
from soniq.errors import ConfigurationError, UnknownJobError
from soniq.ids import new_id
from soniq.serialization import utc_now
from soniq.testing import drain
from soniq.types import JobCoverage, WorkerInfo
from tests.helpers import wait_for

pytestmark = pytest.mark.anyio

KEY = "defaults-key-" + secrets.token_hex(16)


async def work(n: int = 0) -> int:
    return n + 1


async def _stored(app: Soniq, **options: Any) -> None:
    """The worker side: register ``defs.x`` with ``options`` and let a worker store it."""
    app.job(name="defs.x", **options)(work)
    await drain(app)


async def _row(app: Soniq, job_id: str) -> tuple[str, int, int]:
    record = await app.get_job(job_id)
    assert record is not None
    return record["queue"], record["priority"], record["max_attempts"]


async def test_a_producer_takes_an_unregistered_names_defaults_from_its_definition(
        app: Soniq, producer: Soniq) -> None:
    await _stored(app, queue="q2", priority=5, retries=6)
    by_name = await producer.enqueue("defs.x", n=1)
    by_ref = await producer.enqueue(TaskRef("defs.x"), n=2)
    many = await producer.enqueue_many("defs.x", [{"n": 3}, {"n": 4}])
    for job_id in (by_name, by_ref, *many):
        assert await _row(app, job_id) == ("q2", 5, 7)
    explicit = await producer.enqueue("defs.x", queue="q9", priority=1)
    assert await _row(app, explicit) == ("q9", 1, 7)  # per-call options win
    declared = await producer.enqueue(TaskRef("defs.x", default_queue="mine"))
    assert await _row(app, declared) == ("mine", 5, 7)  # so does the TaskRef's own default
    unknown = await producer.enqueue("defs.nobody-stored")
    assert await _row(app, unknown) == ("default", 100, 4)  # the settings' defaults, as before
    assert len(await drain(app, queues=["q2"])) == 4  # the worker that stored it runs them


async def test_the_blocking_facade_reads_the_same_defaults(app: Soniq, producer: Soniq) -> None:
    await _stored(app, queue="q2", priority=5, retries=6)

    def enqueue() -> list[str]:
        return [producer.sync.enqueue(TaskRef("defs.x"), n=1),
                *producer.sync.enqueue_many("defs.x", [{"n": 2}])]

    for job_id in await anyio.to_thread.run_sync(enqueue):
        assert await _row(app, job_id) == ("q2", 5, 7)


async def test_a_local_registration_wins_and_reads_nothing(app: Soniq, producer: Soniq) -> None:
    await _stored(app, queue="q2", priority=5, retries=6)
    producer.job(name="defs.x", queue="local")(work)
    job_id = await producer.enqueue("defs.x")
    assert await _row(app, job_id) == ("local", 100, 4)
    assert producer.producer.definitions.cached("defs.x", stale=True) == (False, None)


async def test_strict_validation_still_refuses_an_unregistered_string(
        app: Soniq, other: Callable[..., Soniq]) -> None:
    await _stored(app, queue="q2")
    strict = other()
    try:
        with pytest.raises(UnknownJobError):
            await strict.enqueue("defs.x")
        job_id = await strict.enqueue(TaskRef("defs.x"))  # a TaskRef reads the definition
        assert (await _row(app, job_id))[0] == "q2"
    finally:
        await strict.close()


async def test_cached_defaults_stay_until_the_ttl_passes(app: Soniq, producer: Soniq) -> None:
    now = [1_000.0]
    producer.producer.definitions.clock = lambda: now[0]
    await _stored(app, queue="q2")
    assert (await _row(app, await producer.enqueue("defs.x")))[0] == "q2"
    await _stored(app, queue="q3")  # a deploy moves the job
    assert (await app.definitions.get("defs.x") or _none()).definition.queue == "q3"
    now[0] += 59
    assert (await _row(app, await producer.enqueue("defs.x")))[0] == "q2"  # stale, by design
    now[0] += 1  # definitions_cache_ttl (60 s) has passed
    assert (await _row(app, await producer.enqueue("defs.x")))[0] == "q3"


async def test_a_missing_definition_is_cached_too_and_ttl_zero_reads_every_time(
        app: Soniq, producer: Soniq, other: Callable[..., Soniq]) -> None:
    now = [0.0]
    producer.producer.definitions.clock = lambda: now[0]
    assert (await _row(app, await producer.enqueue("defs.x")))[0] == "default"
    uncached = other(enqueue_validation="none", definitions_cache_ttl=0)
    try:
        await _stored(app, queue="q2")
        assert (await _row(app, await producer.enqueue("defs.x")))[0] == "default"
        assert (await _row(app, await uncached.enqueue("defs.x")))[0] == "q2"
        await _stored(app, queue="q3")
        assert (await _row(app, await uncached.enqueue("defs.x")))[0] == "q3"
        now[0] += 60
        assert (await _row(app, await producer.enqueue("defs.x")))[0] == "q3"
    finally:
        await uncached.close()


async def test_an_encrypted_definition_is_encrypted_or_refused(
        backend_name: str, database_url: str | None, other: Callable[..., Soniq]) -> None:
    worker = other(secret_keys=KEY, poll_interval=0.05)
    try:
        worker.job(name="defs.secret", encrypt=True)(work)
        await drain(worker)  # stores encrypt=True
        keyless = other(enqueue_validation="none")
        with pytest.raises(ConfigurationError, match="SONIQ_SECRET_KEYS"):
            await keyless.enqueue(TaskRef("defs.secret"), n=41)
        assert await worker.list_jobs() == []  # nothing was written in plaintext
        keyed = other(secret_keys=KEY)
        job_id = await keyed.enqueue(TaskRef("defs.secret"), n=41)
        record = await worker.get_job(job_id)
        # Sealed: only the envelope is stored (its base64 text may contain "41" by chance).
        assert record is not None and list(record["args"]) == ["$enc"]
        assert len(await drain(worker)) == 1  # the worker decrypts what the producer sealed
        assert await keyed.get_result(job_id) == 42
        for soniq in (keyless, keyed):
            await soniq.close()
    finally:
        await worker.close()


async def test_coverage_counts_live_workers_and_flags_names_none_knows(app: Soniq) -> None:
    await app.ensure_initialized()
    backend, store = app.backend, app.backend.definitions
    assert store is not None
    await store.upsert([JobDefinition(name, "q", 100, 4, None, False, {})
                        for name in ("defs.a", "defs.gone", "defs.stale")])
    now = utc_now()
    for names, seen in ((("defs.a", "defs.b"), now), (("defs.a",), now),
                        (("defs.stale",), now - timedelta(hours=1))):
        await backend.register_worker(WorkerInfo(new_id(), "host", 1, None, 1, names), now=seen)
    rows = [(c["name"], c["queue"], c["live_workers"], c["flagged"])
            for c in await app.definitions.coverage()]
    assert rows == [("defs.a", "q", 2, False),
                    ("defs.b", None, 1, False),  # known live, no definition stored
                    ("defs.gone", "q", 0, True),  # stored, no worker
                    ("defs.stale", "q", 0, True)]  # its worker went silent
    later = await app.definitions.coverage(now=now + timedelta(hours=1))
    assert all(c["flagged"] for c in later)


async def test_a_waiting_name_no_worker_knows_is_flagged_at_once(app: Soniq) -> None:
    """A job enqueued under a name no worker ever registered (no definition: a typo through a
    TaskRef, a job a deploy has not reached yet) is flagged as soon as it waits -- also when it
    is scheduled for later -- not after ``unknown_job_grace``; a name a live worker knows is not."""
    app.job(name="defs.known")(work)
    producer = Soniq(backend=app.backend, enqueue_validation="none")
    await producer.enqueue(TaskRef("defs.typo"), scheduled_at=3600)
    await producer.enqueue("defs.known")
    async with app.running_worker(queues=["elsewhere"]):
        rows = [(c["name"], c["queue"], c["live_workers"], c["flagged"])
                for c in await app.definitions.coverage()]
    assert rows == [("defs.known", "default", 1, False), ("defs.typo", None, 0, True)]


async def test_a_name_is_flagged_once_the_worker_that_knew_it_stops(app: Soniq) -> None:
    app.job(name="defs.only")(work)
    async with app.running_worker():
        [row] = await app.definitions.coverage()
        assert (row["name"], row["live_workers"], row["flagged"]) == ("defs.only", 1, False)

    async def flagged() -> list[JobCoverage]:
        rows = await app.definitions.coverage()
        return rows if rows[0]["flagged"] else []

    # The worker removes its row when it stops; under trio on PostgreSQL a beat cancelled in
    # flight can land after that, and the row then goes silent (heartbeat_timeout is 2 s here).
    [row] = await wait_for(flagged, message="the name flagged")
    assert (row["name"], row["queue"], row["live_workers"]) == ("defs.only", "default", 0)


def _none() -> Any:
    raise AssertionError("no definition stored")


async def test_a_producer_takes_an_unregistered_names_uniqueness_from_its_definition(
        app: Soniq, producer: Soniq) -> None:
    await _stored(app, unique_by=["n"], unique_for=3600, on_conflict="replace")
    first = await producer.enqueue("defs.x", n=1, scheduled_at=60)
    assert await producer.enqueue("defs.x", n=1, scheduled_at=120) == first
    assert await producer.enqueue("defs.x", n=2) != first
    stored = await app.definitions.get("defs.x")
    assert stored is not None and dict(stored.definition.options) == {
        "unique": True, "retry_backoff": False, "retry_delay": 0.0, "retry_max_delay": None,
        "unique_by": ["n"], "unique_for": 3600.0, "on_conflict": "replace"}
