"""Concurrency limits through the public API, on every backend under asyncio and trio: workers
run at most ``concurrency_limit`` jobs per key, ``ordered`` jobs start in enqueue order across
retries, a producer that never registered the job takes the limit from the stored definition,
and a worker gives a limited job enqueued without its key its key, or dead-letters it when its
arguments lack the key."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from soniq import Soniq, TaskRef
from soniq.errors import ValidationError
from soniq.ids import new_id
from soniq.serialization import dumps
from soniq.testing import drain
from soniq.types import NewJob, WorkerInfo

pytestmark = pytest.mark.anyio


async def test_workers_run_at_most_the_limit_per_key(app: Soniq) -> None:
    running: Counter[str] = Counter()
    worst: Counter[str] = Counter()

    @app.job(name="limits.charge", concurrency_limit=2, concurrency_key="customer")
    async def charge(customer: str, n: int) -> None:
        running[customer] += 1
        worst[customer] = max(worst[customer], running[customer])
        await anyio.sleep(0.01)
        running[customer] -= 1

    await app.enqueue_many(charge, [{"customer": c, "n": n} for n in range(6) for c in "ab"])
    records = await drain(app, concurrency=8)
    assert len(records) == 12 and {r["status"] for r in records} == {"done"}
    assert worst == {"a": 2, "b": 2}


async def test_ordered_jobs_start_in_enqueue_order_even_with_retries(app: Soniq) -> None:
    started: list[int] = []
    failed: set[int] = set()

    @app.job(name="limits.post", ordered=True, concurrency_key="account", retries=2)
    async def post(account: str, i: int) -> None:
        started.append(i)
        if i % 3 == 0 and i not in failed:
            failed.add(i)
            raise RuntimeError("try again")

    for i in range(8):
        await app.enqueue(post, account="acc", i=i)
    await drain(app, concurrency=4)
    # Each failed job ran again before the next one started: it held the key during its retry.
    assert started == [0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7]


async def test_a_missing_key_is_refused_at_enqueue(app: Soniq) -> None:
    @app.job(name="limits.k", concurrency_limit=1, concurrency_key="tenant")
    async def job(**kwargs: Any) -> None: ...

    with pytest.raises(ValidationError, match="lack 'tenant'"):
        await app.enqueue(job, other=1)


async def test_a_producer_without_the_job_takes_the_stored_limit(
        app: Soniq, producer: Soniq) -> None:
    @app.job(name="limits.remote", concurrency_limit=1, concurrency_key="tenant")
    async def remote(tenant: str) -> None: ...

    await drain(app)  # a worker stores the definition
    ids = [await producer.enqueue(TaskRef("limits.remote"), tenant="t1") for _ in range(3)]
    backend = app.backend
    claimed = await backend.claim_jobs(new_id(), None, 10)
    assert [c.id for c in claimed] == ids[:1]
    assert claimed[0].concurrency_key == '"t1"'


async def test_a_worker_keys_or_dead_letters_jobs_enqueued_without_a_key(app: Soniq) -> None:
    ran: list[str] = []

    @app.job(name="limits.late", concurrency_limit=1, concurrency_key="tenant")
    async def late(tenant: str = "default-tenant", n: int = 0) -> None:
        ran.append(f"{tenant}:{n}")

    @app.job(name="limits.strict", concurrency_limit=1, concurrency_key="tenant")
    async def strict(**kwargs: Any) -> None: ...

    # Rows as a producer that knew nothing of the limit wrote them (no concurrency key).
    rows = [NewJob(new_id(), "limits.late", "default", 100, dumps(args), 3)
            for args in ({"tenant": "t", "n": 1}, {"n": 2}, {"tenant": "t", "n": 3})]
    missing = NewJob(new_id(), "limits.strict", "default", 100, dumps({"x": 1}), 3)
    await app.backend.insert_jobs([*rows, missing])
    await drain(app, concurrency=4)
    assert sorted(ran) == ["default-tenant:2", "t:1", "t:3"]
    for row in rows:
        record = await app.get_job(row.id)
        assert record is not None and record["status"] == "done"
        assert record["attempts"] == 1  # the give-back refunded the first claim
    dead = await app.get_job(missing.id)
    assert dead is not None and dead["status"] == "dead_letter"
    assert dead["errors"][-1]["type"] == "MissingConcurrencyKey"
    assert "'tenant'" in dead["errors"][-1]["message"]


async def test_the_cleanup_reconciles_the_slots_of_known_jobs(app: Soniq) -> None:
    @app.job(name="limits.raised", concurrency_limit=3, concurrency_key="k")
    async def raised(k: str) -> None: ...

    # Enqueued while the limit was 1 (an older deploy): one may run, two wait.
    backend = app.backend
    await app.ensure_initialized()
    jobs = [NewJob(new_id(), "limits.raised", "default", 100, dumps({"k": "x"}), 3, None, None,
                   '"x"', 1) for _ in range(3)]
    await backend.insert_jobs(jobs)
    alive = WorkerInfo(new_id(), "host", 1, None, 4)
    await backend.register_worker(alive)  # (the rescue leaves its job alone)
    assert len(await backend.claim_jobs(alive.id, None, 10)) == 1
    worker = app.worker(run_once=True)
    assert await worker.cleanup.tick() is not None
    assert len(await backend.claim_jobs(alive.id, None, 10)) == 2
