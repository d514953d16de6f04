"""Dependencies across real ``soniq worker`` processes on PostgreSQL: a fan-out of 1,000 jobs
with one fan-in job runs the fan-in exactly once, after all 1,000 (five rounds on the same
workers), and a chain whose middle step's worker is SIGKILLed finishes, nothing lost."""

from __future__ import annotations

import pytest

from soniq import EnqueueOptions, Soniq
from tests.reliability.ledger import Ledger, assert_nothing_lost
from tests.reliability.workers import Workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres, pytest.mark.chaos]


async def test_a_fan_in_runs_once_after_its_whole_fan_out(app: Soniq, pool: Workers,
                                                          ledger: Ledger) -> None:
    procs = [pool.start("--concurrency", "16") for _ in range(3)]
    everything: list[str] = []
    rounds = []
    for _ in range(5):
        parts = await app.enqueue_many("nap", [{"ms": 0} for _ in range(1_000)])
        fan_in = await app.enqueue("step", options=EnqueueOptions(depends_on=parts))
        rounds.append((parts, fan_in))
        everything += [*parts, fan_in]
        await assert_nothing_lost(app, ledger, everything, timeout=120)
    await pool.stop(*procs)
    entries = await ledger.entries()
    for parts, fan_in in rounds:
        runs = [e for e in entries if e.job_id == fan_in and e.event == "start"]
        assert len(runs) == 1, runs
        last_part = max(e.at for e in entries if e.job_id in set(parts) and e.event == "finish")
        assert runs[0].at >= last_part
        assert await app.get_result(fan_in) == 1_000  # it saw every dependency's result


async def test_a_chain_survives_a_killed_worker_in_its_middle(app: Soniq, pool: Workers,
                                                              ledger: Ledger) -> None:
    first = await app.enqueue("step")
    middle = await app.enqueue("step", kill_first=True,
                               options=EnqueueOptions(depends_on=[first]))
    last = await app.enqueue("step", options=EnqueueOptions(depends_on=[middle]))
    procs = [pool.start("--concurrency", "2") for _ in range(2)]
    records = await assert_nothing_lost(app, ledger, [first, middle, last], timeout=90)
    assert [e["type"] for e in records[middle]["errors"]] == ["WorkerLost"]
    entries = await ledger.entries()
    middle_done = max(e.at for e in entries if e.job_id == middle and e.event == "finish")
    assert min(e.at for e in entries if e.job_id == last) >= middle_done
    for proc in procs:
        if proc.poll() is None:
            await pool.stop(proc)
