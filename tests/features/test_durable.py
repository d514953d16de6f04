"""Durable functions (issue #27, first slice) on every backend, under asyncio and trio: steps run
once and replay, errors replay and escape, sleeps give the slot back and never wake early,
``ctx.patched``, non-determinism dead-letters once, and a stale attempt's step is refused."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest
from cryptography.fernet import Fernet

from soniq import DurableContext, JobContext, Soniq
from soniq.errors import (
    ConfigurationError,
    LeaseLostError,
    NonDeterminismError,
    StepFailedError,
    ValidationError,
)
from soniq.features.durable import durable_job
from soniq.serialization import utc_now
from soniq.types import JobOutcome, JobStatus, Snooze
from tests.helpers import running_worker, wait_for, wait_for_status

pytestmark = pytest.mark.anyio


async def test_steps_run_once_and_replay_across_attempts(app: Soniq) -> None:
    runs: Counter[str] = Counter()

    async def fetch(order: str) -> dict[str, Any]:
        runs["fetch"] += 1
        return {"order": order, "items": (1, 2)}  # a tuple: returned as saved, a list

    def price(order: dict[str, Any], *, rate: float) -> float:  # a sync step: a thread
        runs["price"] += 1
        return len(order["items"]) * rate

    @app.durable(name="fulfil", retries=3, retry_delay=0)
    async def fulfil(ctx: DurableContext, order_id: str) -> dict[str, Any]:
        order = await ctx.step(fetch, order_id)
        again = await ctx.step(fetch, order_id)  # the same function twice: fetch#2
        total = await ctx.step(price, order, rate=2.5)
        if ctx.attempt < 3:
            raise RuntimeError("crash after the steps")
        return {"order": order, "again": again, "total": total, "attempt": ctx.attempt}

    job_id = await app.enqueue(fulfil, order_id="A1")
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "done", "dead_letter")
    assert record["status"] == "done", record["errors"]
    assert record["result"] == {"order": {"order": "A1", "items": [1, 2]},
                                "again": {"order": "A1", "items": [1, 2]}, "total": 5.0,
                                "attempt": 3}
    assert runs == {"fetch": 2, "price": 1}  # each step once, whatever the attempts
    steps = await app.backend.steps.load(job_id)
    assert [(s.step_key, s.position, s.status) for s in steps] == [
        ("test_steps_run_once_and_replay_across_attempts.<locals>.fetch#1", 0, "done"),
        ("test_steps_run_once_and_replay_across_attempts.<locals>.fetch#2", 1, "done"),
        ("test_steps_run_once_and_replay_across_attempts.<locals>.price#1", 2, "done")]
    assert await app.delete_job(job_id)  # the steps go with their job
    assert await app.backend.steps.load(job_id) == []


async def test_a_caught_step_error_replays_and_an_escaped_one_runs_again(app: Soniq) -> None:
    runs: Counter[str] = Counter()

    async def flaky(what: str) -> str:
        runs[what] += 1
        if what == "always" or runs[what] == 1:
            raise ValueError(f"{what} broke")
        return f"{what} ok"

    @app.durable(name="errors", retries=3, retry_delay=0)
    async def errors(ctx: DurableContext) -> list[str]:
        seen = []
        try:
            await ctx.step(flaky, "always", name="caught")
        except StepFailedError as exc:  # saved: every replay gets the same error, unrun
            seen.append(f"{exc.step_key} {exc.error_type}: {exc.message}")
        seen.append(await ctx.step(flaky, "escapes"))  # fails once, escapes: the retry reruns
        if ctx.attempt == 2:
            await ctx.sleep(0.05)  # one more replay
        return seen

    job_id = await app.enqueue(errors)
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "done", "dead_letter")
    assert record["status"] == "done", record["errors"]
    assert record["result"] == ["caught#1 ValueError: always broke", "escapes ok"]
    assert runs == {"always": 1, "escapes": 2}
    assert [e["type"] for e in record["errors"]] == ["StepFailedError"]
    assert record["attempts"] == 2  # the sleep used no attempt


async def test_a_sleep_gives_the_slot_back_and_never_wakes_early(app: Soniq) -> None:
    nap = 1.0
    woke: list[datetime] = []

    @app.durable(name="napper")
    async def napper(ctx: DurableContext) -> str:
        before = await ctx.step(lambda: utc_now().isoformat(), name="before")
        await ctx.sleep(timedelta(seconds=nap))
        woke.append(utc_now())
        return str(before)

    @app.job(name="plain")
    async def plain() -> str:
        return "ran"

    job_id = await app.enqueue(napper)
    async with running_worker(app, concurrency=1):
        await wait_for(lambda: _step_count(app, job_id, 2), message="the sleep saved")
        # One slot, and the sleeping function does not hold it: other work runs meanwhile.
        plain_ids = [await app.enqueue(plain) for _ in range(3)]
        for plain_id in plain_ids:
            await wait_for_status(app, plain_id, "done")
        sleeping = await app.get_job(job_id)
        assert sleeping is not None and sleeping["status"] == "queued"
        assert sleeping["attempts"] == 0  # given back: no attempt used
        record = await wait_for_status(app, job_id, "done", "dead_letter")
    assert record["status"] == "done"
    assert len(woke) == 1  # resumed once
    assert woke[0] - datetime.fromisoformat(record["result"]) >= timedelta(seconds=nap)
    [_, sleep] = await app.backend.steps.load(job_id)
    assert sleep.step_key == "sleep#1" and sleep.status == "sleep"
    assert woke[0] >= datetime.fromisoformat(app_value(sleep.value))


def app_value(text: str) -> str:
    return str(json.loads(text))


async def _step_count(app: Soniq, job_id: str, count: int) -> bool:
    return len(await app.backend.steps.load(job_id)) >= count


async def test_a_sleep_inside_a_task_group_is_refused_once(app: Soniq) -> None:
    @app.durable(name="branches", retries=3, retry_delay=0)
    async def branches(ctx: DurableContext) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ctx.sleep, 0.1)
            tg.start_soon(ctx.sleep, 0.2)

    job_id = await app.enqueue(branches)
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "done", "dead_letter")
    [error] = record["errors"]
    assert error["type"] == "NonDeterminismError" and "inside a task group" in error["message"]


async def test_sleep_until_and_bad_durations(app: Soniq) -> None:
    errors: list[str] = []

    @app.durable(name="until")
    async def until(ctx: DurableContext) -> str:
        for bad in (-1, "soon", float("nan")):
            try:
                await ctx.sleep(bad)  # type: ignore[arg-type]
            except ValidationError as exc:
                errors.append(exc.message)
        try:
            await ctx.sleep_until(datetime(2030, 1, 1))  # naive
        except ValidationError as exc:
            errors.append(exc.message)
        await ctx.sleep_until(utc_now() - timedelta(seconds=1))  # past: passes at once
        return "ok"

    job_id = await app.enqueue(until)
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "done", "dead_letter")
    assert record["result"] == "ok"
    assert len(errors) == 4 and "timezone-aware" in errors[-1]


@pytest.mark.parametrize("change", ["reorder", "rename", "reargue"])
async def test_changed_code_under_a_suspended_function_is_dead_lettered_once(
        app: Soniq, change: str) -> None:
    state = {"changed": False}

    async def a(x: int) -> int:
        return x

    async def b(x: int) -> int:
        return x

    @app.durable(name="changing", retries=5, retry_delay=0)
    async def changing(ctx: DurableContext) -> int:
        if not state["changed"]:
            first = await ctx.step(a, 1)
            second = await ctx.step(b, 2)
            await ctx.sleep(0.5)
            return first + second
        if change == "reorder":
            await ctx.step(b, 2)
        elif change == "rename":
            await ctx.step(b, 1, name="a2")
        else:
            await ctx.step(a, 99)
        return 0

    job_id = await app.enqueue(changing)
    async with running_worker(app):
        await wait_for(lambda: _step_count(app, job_id, 3), message="the sleep saved")
        state["changed"] = True
        record = await wait_for_status(app, job_id, "done", "dead_letter")
    assert record["status"] == "dead_letter"
    [error] = record["errors"]  # once: never retried in a loop
    assert error["type"] == "NonDeterminismError"
    saved = "test_changed_code_under_a_suspended_function_is_dead_lettered_once.<locals>.a#1"
    assert repr(saved) in error["message"]
    expected = {"reorder": saved.replace(".a#1", ".b#1"), "rename": "a2#1",
                "reargue": saved}[change]
    assert repr(expected) in error["message"]
    if change == "reargue":
        assert "its arguments changed" in error["message"]


async def test_a_change_behind_patched_succeeds_and_new_runs_take_it(app: Soniq) -> None:
    state = {"changed": False}
    taken: list[bool] = []

    async def charge() -> str:
        return "charged"

    async def check_fraud() -> str:
        return "checked"

    @app.durable(name="patching")
    async def patching(ctx: DurableContext, label: str) -> list[str]:
        done = [await ctx.step(charge)]
        if state["changed"]:
            patched = ctx.patched("fraud-check")
            taken.append(patched)
            if patched:
                done.append(await ctx.step(check_fraud))
        await ctx.sleep(0.5)
        done.append(await ctx.step(charge))
        return done

    old = await app.enqueue(patching, label="old")
    async with running_worker(app):
        await wait_for(lambda: _step_count(app, old, 2), message="the old run's sleep saved")
        state["changed"] = True
        new = await app.enqueue(patching, label="new")
        old_record = await wait_for_status(app, old, "done", "dead_letter")
        new_record = await wait_for_status(app, new, "done", "dead_letter")
    assert old_record["status"] == "done", old_record["errors"]
    assert old_record["result"] == ["charged", "charged"]
    assert new_record["result"] == ["charged", "checked", "charged"]
    assert taken.count(True) >= 2 and taken.count(False) == 1  # the new run replays True
    keys = [s.step_key for s in await app.backend.steps.load(new)]
    assert "patched:fraud-check#1" in keys


async def test_steps_in_a_task_group_replay_whatever_order_they_finish_in(app: Soniq) -> None:
    runs: Counter[int] = Counter()
    rounds = 15

    async def work(i: int) -> int:
        runs[i] += 1
        await anyio.sleep(random.random() / 100)
        return i * 10

    @app.durable(name="gathering")
    async def gathering(ctx: DurableContext) -> list[int]:
        pending = [ctx.step(work, i) for i in range(3)]  # keys taken here, in order
        results: dict[int, int] = {}

        async def take(i: int) -> None:
            await anyio.sleep(random.random() / 100)
            results[i] = await pending[i]

        async with anyio.create_task_group() as tg:
            for i in random.sample(range(3), 3):
                tg.start_soon(take, i)
        for _ in range(rounds):  # each sleep ends the attempt; each resume replays all
            await ctx.sleep(0.01)
        return [results[i] for i in range(3)]

    job_id = await app.enqueue(gathering)
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "done", "dead_letter", timeout=60)
    assert record["status"] == "done", record["errors"]
    assert record["result"] == [0, 10, 20]
    assert runs == {0: 1, 1: 1, 2: 1}


async def test_a_stale_attempts_step_write_is_refused(app: Soniq) -> None:
    started, release = anyio.Event(), anyio.Event()
    raised: list[BaseException] = []
    leases: list[str] = []

    async def slow() -> str:
        started.set()
        await release.wait()
        return "late"

    @app.durable(name="stale", retries=0)
    async def stale(ctx: DurableContext) -> str:
        leases.append(ctx.lease_id)
        try:
            return str(await ctx.step(slow))
        except LeaseLostError as exc:
            raised.append(exc)
            raise

    job_id = await app.enqueue(stale)
    async with running_worker(app):
        await started.wait()
        # The job moves on (as a rescue would): this attempt's lease no longer holds.
        assert await app.backend.complete_jobs([JobOutcome(
            job_id, leases[0], JobStatus.QUEUED, refund_attempt=True,
            run_at=utc_now() + timedelta(days=1))]) == [job_id]
        release.set()
        await wait_for(lambda: raised, message="LeaseLostError in the function")
    assert await app.backend.steps.load(job_id) == []  # nothing written
    record = await app.get_job(job_id)
    assert record is not None and record["status"] == "queued"


async def test_an_encrypted_function_stores_its_steps_encrypted(
        backend_name: str, database_url: str | None) -> None:
    app = Soniq(database_url=database_url, backend=backend_name if database_url is None else None,
                poll_interval=0.05, secret_keys=[Fernet.generate_key().decode()])

    async def secret() -> str:
        return "the secret recipe"

    @app.durable(name="sealed", encrypt=True)
    async def sealed(ctx: DurableContext) -> str:
        value = str(await ctx.step(secret))
        await ctx.sleep(0.01)
        return value

    try:
        job_id = await app.enqueue(sealed)
        async with running_worker(app):
            record = await wait_for_status(app, job_id, "done", "dead_letter")
        assert record["status"] == "done"
        assert await app.get_result(job_id) == "the secret recipe"
        stored = await app.backend.steps.load(job_id)
        assert stored and all("secret recipe" not in (s.value or "") for s in stored)
    finally:
        await app.close()


async def test_idempotency_keys_are_stable_per_step(app: Soniq) -> None:
    keys: list[str] = []

    def call_api(ctx: DurableContext) -> str:  # a sync step: the key is found in its thread
        keys.append(ctx.idempotency_key())
        return ctx.idempotency_key()

    @app.durable(name="keyed", retries=2, retry_delay=0)
    async def keyed(ctx: DurableContext) -> list[str]:
        first = await ctx.step(call_api, ctx, name="charge")
        if ctx.attempt == 1:
            raise RuntimeError("crash after the step")
        with pytest.raises(ValidationError, match="inside a step"):
            ctx.idempotency_key()
        return [first, ctx.idempotency_key("charge#1")]

    job_id = await app.enqueue(keyed)
    async with running_worker(app):
        record = await wait_for_status(app, job_id, "done", "dead_letter")
    assert record["result"] == [f"{job_id}:charge#1"] * 2
    assert keys == [f"{job_id}:charge#1"]


async def test_registration_is_checked() -> None:
    app = Soniq(backend="memory")

    async def no_ctx() -> None: ...

    def not_async(ctx: DurableContext) -> None: ...

    with pytest.raises(ConfigurationError, match="first parameter"):
        app.durable(name="a")(no_ctx)
    with pytest.raises(ConfigurationError, match="async function"):
        app.durable(name="b")(not_async)
    await app.close()


async def test_the_job_without_a_worker_context_runs_without_history() -> None:
    """A context built by hand (no reporter): steps run, nothing is saved, a sleep snoozes."""

    async def fn(ctx: DurableContext, x: int) -> int:
        y = await ctx.step(lambda v: v + 1, x, name="inc")
        await ctx.sleep(60)
        return int(y)

    job = durable_job(fn)
    now = utc_now()
    ctx = JobContext(job_id="j", job_name="n", attempt=1, max_attempts=1, queue="q",
                     worker_id="w", scheduled_at=now, created_at=now)
    result = await job(ctx=ctx, x=1)
    assert isinstance(result, Snooze) and 50 < result.seconds <= 60


async def test_a_nondeterminism_error_the_code_catches_still_ends_the_function(
        app: Soniq) -> None:
    state = {"changed": False}

    async def a() -> int:
        return 1

    async def b() -> int:
        return 2

    @app.durable(name="swallower", retries=3, retry_delay=0)
    async def swallower(ctx: DurableContext) -> str:
        try:
            await ctx.step(b if state["changed"] else a)
        except NonDeterminismError:
            return "swallowed"
        await ctx.sleep(0.5)
        return "done"

    job_id = await app.enqueue(swallower)
    async with running_worker(app):
        await wait_for(lambda: _step_count(app, job_id, 2), message="the sleep saved")
        state["changed"] = True
        record = await wait_for_status(app, job_id, "done", "dead_letter")
    assert record["status"] == "dead_letter"
    assert [e["type"] for e in record["errors"]] == ["NonDeterminismError"]
