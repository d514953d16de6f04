"""The storage contract of queue limits and rate limits, on memory, SQLite and PostgreSQL under
asyncio and trio: a gated queue (a stored ``concurrency_limit`` or ``rate_limit``) starts jobs
only through the gate and within its limits; a row with a ``rate_key`` starts only for a caller
naming its job in ``rates``, with a token of its bucket; ``RateLimited`` holds the bucket for
every claimer. Time moves by ``now=``, never by sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from soniq import RateLimited, Soniq
from soniq.backends.base import StorageBackend
from soniq.errors import JobArgumentsError
from soniq.ids import new_id
from soniq.limits import Rate, RateGate
from soniq.serialization import dumps, loads
from soniq.types import ClaimedJob, JobOutcome, JobStatus, NewJob

pytestmark = pytest.mark.anyio

WORKER = "00000000-0000-7000-8000-0000000000c1"
NAME = "tests.rated"
#: A start time after every insert of the session (inserts are due at the wall clock's now; a
#: day ahead, since the module is imported when the suite starts, which may run for minutes).
T0 = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new(queue: str = "q", *, rate_key: str | None = None, name: str = NAME,
        priority: int = 100, **fields: object) -> NewJob:
    return NewJob(id=new_id(), job_name=name, queue=queue, priority=priority, args=dumps({}),
                  max_attempts=3, rate_key=rate_key, **fields)  # type: ignore[arg-type]


def gate(per_second: int, name: str = NAME) -> tuple[RateGate, ...]:
    return (RateGate(name, Rate(per_second, 1.0)),)


async def claim(storage: StorageBackend, now: datetime = T0, limit: int = 100, *,
                limited: frozenset[str] = frozenset({"q"}),
                rates: tuple[RateGate, ...] = (), queues: list[str] | None = None,
                ) -> list[ClaimedJob]:
    return await storage.claim_jobs(WORKER, queues, limit, now=now, limited=limited,
                                    rates=rates)


async def finish(storage: StorageBackend, job: ClaimedJob, **fields: object) -> list[str]:
    return await storage.complete_jobs(
        [JobOutcome(job.id, job.lease_id, fields.pop("status", JobStatus.DONE),  # type: ignore[arg-type]
                    **fields)], now=T0)  # type: ignore[arg-type]


# -- queue limits --------------------------------------------------------------------------------
async def test_a_queue_concurrency_limit_counts_running_jobs(app: Soniq,
                                                             storage: StorageBackend) -> None:
    early = new()
    await storage.insert_jobs([early])
    [running] = await claim(storage, limited=frozenset())  # claimed before the limit was set
    assert running.id == early.id
    jobs = [new() for _ in range(5)]
    plain = [new("other") for _ in range(2)]
    await storage.insert_jobs([*jobs, *plain])
    assert await app.queues.set_concurrency_limit("q", 2) is True
    first = await claim(storage)
    assert {c.id for c in first} == {jobs[0].id, *(p.id for p in plain)}  # 1 running already
    assert await claim(storage) == []
    assert await finish(storage, running) == [running.id]
    [second] = await claim(storage)
    assert second.id == jobs[1].id
    assert await claim(storage) == []
    for done in (f for f in first if f.queue == "q"):
        await finish(storage, done)
    assert [c.id for c in await claim(storage, limit=5)] == [jobs[2].id]


async def test_a_gated_queue_is_claimed_only_when_the_caller_names_it(
        app: Soniq, storage: StorageBackend) -> None:
    gated, plain = new(), new("other")
    await storage.insert_jobs([gated, plain])
    await app.queues.set_concurrency_limit("q", 5)
    assert [c.id for c in await claim(storage, limited=frozenset())] == [plain.id]
    assert await claim(storage, limited=frozenset({"q"}), queues=["other"]) == []
    assert [c.id for c in await claim(storage, queues=["q", "other"])] == [gated.id]


async def test_a_queue_rate_limit_starts_full_and_refills(app: Soniq,
                                                          storage: StorageBackend) -> None:
    jobs = [new() for _ in range(10)]
    await storage.insert_jobs(jobs)
    await app.queues.set_rate_limit("q", "3/s")
    assert len(await claim(storage, limit=1)) == 1
    assert len(await claim(storage)) == 2  # the bucket held 3
    assert await claim(storage) == []
    assert len(await claim(storage, at(0.5))) == 1  # 1.5 tokens
    assert len(await claim(storage, at(1.0))) == 2  # 0.5 + 1.5
    assert len(await claim(storage, at(60))) == 3  # never more than the bucket holds
    assert await claim(storage, limited=frozenset(), now=at(120)) == []


async def test_the_rate_bound_over_an_interval(app: Soniq, storage: StorageBackend) -> None:
    """Over any interval of length T, starts <= N*T/period + N."""
    await storage.insert_jobs([new() for _ in range(100)])
    await app.queues.set_rate_limit("q", "4/s")
    starts = 0
    for step in range(21):  # every 0.25 s for 5 s
        starts += len(await claim(storage, at(step * 0.25)))
    assert starts == 4 + 4 * 5


async def test_a_rate_limit_change_refills_the_bucket(app: Soniq,
                                                      storage: StorageBackend) -> None:
    await storage.insert_jobs([new() for _ in range(10)])
    await app.queues.set_rate_limit("q", "2/s")
    assert len(await claim(storage)) == 2
    assert await app.queues.set_rate_limit("q", "2/s") is False  # no change: no refill
    assert await claim(storage) == []
    assert await app.queues.set_rate_limit("q", "3/s") is True
    assert len(await claim(storage)) == 3
    assert await app.queues.set_rate_limit("q", None) is True  # no limit left: not gated
    assert len(await claim(storage, limited=frozenset())) == 5


async def test_pause_beats_the_limits(app: Soniq, storage: StorageBackend) -> None:
    await storage.insert_jobs([new(), new(rate_key="")])
    await app.queues.set_concurrency_limit("q", 5)
    await app.queues.pause("q")
    assert await claim(storage, rates=gate(10)) == []
    await app.queues.resume("q")
    assert len(await claim(storage, rates=gate(10))) == 2


async def test_limited_work_is_claimed_before_plain_work(app: Soniq,
                                                         storage: StorageBackend) -> None:
    plain = [new("busy", priority=1) for _ in range(10)]
    gated, rated = new(priority=500), new("busy", rate_key="k", priority=500)
    await storage.insert_jobs([*plain, gated, rated])
    await app.queues.set_concurrency_limit("q", 5)
    claimed = await claim(storage, limit=3, rates=gate(5))
    assert len(claimed) == 3 and {gated.id, rated.id} <= {c.id for c in claimed}


# -- job rate limits -----------------------------------------------------------------------------
async def test_rated_rows_start_per_bucket_and_only_for_their_gate(
        storage: StorageBackend) -> None:
    a = [new(rate_key='"a"') for _ in range(4)]
    b = [new(rate_key='"b"') for _ in range(4)]
    alone = [new(rate_key="", name="tests.alone") for _ in range(3)]
    await storage.insert_jobs([*a, *b, *alone])
    assert await claim(storage, limited=frozenset()) == []  # the plain claim never takes them
    assert await claim(storage, rates=gate(2, "tests.other")) == []
    claimed = await claim(storage, rates=gate(2))
    assert {c.id for c in claimed} == {a[0].id, a[1].id, b[0].id, b[1].id}
    assert await claim(storage, rates=gate(2)) == []
    assert len(await claim(storage, at(0.5), rates=gate(2))) == 2  # one per key
    assert len(await claim(storage, rates=gate(1, "tests.alone"))) == 1


async def test_queue_limits_do_not_govern_rated_rows(app: Soniq,
                                                     storage: StorageBackend) -> None:
    await storage.insert_jobs([new(rate_key="") for _ in range(3)])
    await app.queues.set_concurrency_limit("q", 1)
    assert len(await claim(storage, limited=frozenset(), rates=gate(10))) == 3


async def test_a_job_with_both_limits_needs_a_slot_and_a_token(
        storage: StorageBackend) -> None:
    jobs = [new(rate_key="", concurrency_key="", concurrency_limit=2) for _ in range(4)]
    for job in jobs:
        await storage.insert_jobs([job])
    [first] = await claim(storage, rates=gate(1))  # two hold slots; one token
    assert first.id == jobs[0].id
    assert await claim(storage, at(0.5), rates=gate(1)) == []
    [second] = await claim(storage, at(1.0), rates=gate(1))
    assert second.id == jobs[1].id
    assert await claim(storage, at(5), rates=gate(1)) == []  # the others are parked
    await finish(storage, first)
    assert [c.id for c in await claim(storage, at(5), rates=gate(1))] == [jobs[2].id]


async def test_enqueue_stores_the_rate_key(app: Soniq, storage: StorageBackend) -> None:
    @app.job(name="tests.fetch", rate_limit="2/s", rate_key="host")
    async def fetch(host: str, path: str = "/") -> None: ...

    for host in ("a", "a", "a", "b"):
        await app.enqueue(fetch, host=host)
    with pytest.raises(JobArgumentsError, match="'host'"):
        await app.enqueue(fetch, path="/x")
    assert await claim(storage, limited=frozenset()) == []
    claimed = await claim(storage, rates=gate(2, "tests.fetch"))
    assert sorted(loads(c.args)["host"] for c in claimed) == ["a", "a", "b"]


async def test_rate_limited_holds_the_bucket_for_every_claimer(app: Soniq,
                                                               storage: StorageBackend) -> None:
    calls: list[str] = []
    errors: list[object] = []
    app.hooks.on_error.append(lambda *args: errors.append(args))

    @app.job(name="tests.api", rate_limit="100/s")
    async def api(n: int) -> None:
        calls.append(f"run {n}")
        if n == 0:
            raise RateLimited(retry_after=30)

    job_id = await app.enqueue(api, n=0)
    await app.run_worker(run_once=True, concurrency=1)
    assert calls == ["run 0"] and errors == []
    record = await app.get_job(job_id)
    assert record is not None
    assert (record["status"], record["attempts"]) == ("queued", 0)
    assert record["scheduled_at"] > datetime.now(UTC) + timedelta(seconds=25)
    later = await app.enqueue(api, n=1)
    now = datetime.now(UTC)
    rates = gate(100, "tests.api")
    assert await claim(storage, now + timedelta(seconds=10), rates=rates) == []
    claimed = await claim(storage, now + timedelta(seconds=31), rates=rates)
    assert {c.id for c in claimed} == {job_id, later}


async def test_a_refused_outcome_holds_nothing(storage: StorageBackend) -> None:
    await storage.insert_jobs([new(rate_key="")])
    [job] = await claim(storage, rates=gate(10))
    stale = JobOutcome(job.id, "not-the-lease", JobStatus.QUEUED, refund_attempt=True,
                       run_at=at(3600), rate_hold=at(3600))
    assert await storage.complete_jobs([stale], now=T0) == []
    await storage.insert_jobs([new(rate_key="")])
    assert len(await claim(storage, rates=gate(10))) == 1
    assert await finish(storage, job, status=JobStatus.QUEUED, run_at=at(3600),
                        rate_hold=at(3600)) == [job.id]
    await storage.insert_jobs([new(rate_key="")])
    assert await claim(storage, at(3599), rates=gate(10)) == []
    assert len(await claim(storage, at(3600), rates=gate(10))) == 2


async def test_a_hold_keeps_the_later_time(storage: StorageBackend) -> None:
    await storage.insert_jobs([new(rate_key='"k"') for _ in range(2)])
    first, second = await claim(storage, rates=gate(10))
    await finish(storage, first, status=JobStatus.QUEUED, run_at=at(60), rate_hold=at(60))
    await finish(storage, second, status=JobStatus.QUEUED, run_at=at(10), rate_hold=at(10))
    assert await claim(storage, at(30), rates=gate(10)) == []
    assert len(await claim(storage, at(60), rates=gate(10))) == 2
