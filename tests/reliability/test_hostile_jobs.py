"""Job code that fights a real ``soniq worker`` process (tests/apps/hostile.py): it raises
``SystemExit``/``KeyboardInterrupt``, its thread cannot be stopped, or it ignores cancellation.
The worker records the attempt and carries on, and two signals always end the process, within
seconds, with the running jobs given back. (The same jobs in process, on every backend and loop:
tests/runtime/test_hostile_jobs.py.)"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator

import pytest

from soniq import JobRecord, Soniq
from tests.apps import hostile
from tests.helpers import wait_for
from tests.reliability.workers import Workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres, pytest.mark.chaos]

HOSTILE = "tests.apps.hostile:app"
#: Generous, for slow CI: the process ends within FORCED_STOP_GRACE (3 s) plus its writes.
EXIT_DEADLINE = 20.0


@pytest.fixture
async def producer(workers: Workers) -> AsyncIterator[Soniq]:
    """A producer on the workers' database that knows the hostile jobs (and their retries)."""
    soniq = Soniq(database_url=workers.env["SONIQ_DATABASE_URL"])
    for spec in hostile.app.registry:
        soniq.registry.register(spec.func, name=spec.name, retries=spec.max_retries)
    try:
        yield soniq
    finally:
        await soniq.close()


async def settled(app: Soniq, workers: Workers, proc: subprocess.Popen[bytes],
                  wanted: dict[str, str]) -> dict[str, JobRecord]:
    """Wait until each job of ``wanted`` (id -> status) has that status; fail at once if the
    worker process dies meanwhile."""

    async def check() -> dict[str, JobRecord] | None:
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited {proc.returncode}:\n"
                                 f"{workers.output(proc)[-3000:]}")
        records = {job_id: await app.get_job(job_id) for job_id in wanted}
        if all(r is not None and r["status"] == wanted[i] for i, r in records.items()):
            return records  # type: ignore[return-value]
        return None

    result: dict[str, JobRecord] = await wait_for(check, timeout=30, message=f"statuses {wanted}")
    return result


async def second_signal(workers: Workers, proc: subprocess.Popen[bytes],
                        signum: signal.Signals) -> int:
    """Send ``signum``, and again once the first is handled; the exit code."""
    proc.send_signal(signum)
    await wait_for(lambda: "finishing running jobs" in workers.output(proc), timeout=10,
                   message="the first signal to be handled")
    proc.send_signal(signum)
    return await workers.exit_code(proc, timeout=EXIT_DEADLINE)


async def test_base_exceptions_fail_their_job_and_a_stuck_thread_does_not_hold_the_process(
        producer: Soniq, workers: Workers) -> None:
    """SystemExit/KeyboardInterrupt from a job (async or in a thread) is that job's failed
    attempt; the jobs beside it finish. Then SIGTERM twice: a thread that cannot be stopped
    (one running, one that timed out before) does not keep the process alive: it exits 143,
    the running job back in the queue with its attempt refunded."""
    failing = {await producer.enqueue(name): "dead_letter"
               for name in ("exits", "interrupted", "exits_in_thread", "spins_in_thread")}
    beside = {await producer.enqueue("naps", seconds=1.0): "done" for _ in range(3)}
    proc = workers.start("--concurrency", "8", app=HOSTILE)
    records = await settled(producer, workers, proc, {**failing, **beside})
    errors = {r["job_name"]: [(e["type"], e["message"]) for e in r["errors"]]
              for r in records.values()}
    assert errors["exits"] == [("SystemExit", "3")] * 2
    assert errors["interrupted"] == [("KeyboardInterrupt", "")]
    assert errors["exits_in_thread"] == [("SystemExit", "4")]
    assert errors["spins_in_thread"] == [("TimeoutError", "job exceeded its timeout of 1s")]
    assert [await producer.get_result(i) for i in beside] == ["rested"] * 3

    blocked = await producer.enqueue("blocks_in_thread")
    await settled(producer, workers, proc, {blocked: "processing"})
    assert await second_signal(workers, proc, signal.SIGTERM) == 143
    record = await producer.get_job(blocked)
    assert record is not None and (record["status"], record["attempts"]) == ("queued", 0)
    output = workers.output(proc)
    assert "Traceback" not in output and "never awaited" not in output
    assert "job thread(s) that could not be stopped are still running" in output
    assert await producer.backend.list_workers() == []


@pytest.mark.parametrize(("loop", "signals", "code"), [
    ("trio", [signal.SIGINT, signal.SIGINT], 130),  # stop now
    ("asyncio", [signal.SIGTERM], 0),  # drain for shutdown_timeout (1 s), then stop
], ids=["SIGINT-twice-trio", "SIGTERM-once-asyncio"])
async def test_the_process_ends_within_seconds_even_if_a_job_ignores_cancellation(
        producer: Soniq, workers: Workers, loop: str, signals: list[signal.Signals],
        code: int) -> None:
    """The job that ignores cancellation would keep the worker's task group open forever; the
    process exits within seconds of being told to stop, both running jobs given back."""
    stubborn = await producer.enqueue("ignores_cancellation")
    polite = await producer.enqueue("naps", seconds=3600)
    proc = workers.start("--loop", loop, app=HOSTILE, SONIQ_SHUTDOWN_TIMEOUT="1")
    await settled(producer, workers, proc, {stubborn: "processing", polite: "processing"})
    await wait_for(lambda: hostile.IGNORING in workers.output(proc), timeout=10,
                   message="the stubborn job to run")
    if len(signals) == 2:
        assert await second_signal(workers, proc, signals[0]) == code
    else:
        proc.send_signal(signals[0])
        assert await workers.exit_code(proc, timeout=EXIT_DEADLINE) == code
    for job_id in (stubborn, polite):  # both given back, attempt refunded
        record = await producer.get_job(job_id)
        assert record is not None and (record["status"], record["attempts"]) == ("queued", 0)
    assert ("1 job(s) ignore cancellation, still running 3s after being cancelled; exiting "
            f"without them (given back to the queue): {stubborn}") in workers.output(proc)
    assert await producer.backend.list_workers() == []
