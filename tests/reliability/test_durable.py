"""A durable function survives a SIGKILLed ``soniq worker`` (a real subprocess, on asyncio and
trio, SQLite and PostgreSQL): killed between two steps or in the middle of one, the function
finishes on another worker; a ledger of step runs shows each finished step ran once and the
interrupted one at most twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from soniq import Soniq
from tests.helpers import wait_for, wait_for_status
from tests.reliability.conftest import ON_SQLITE_AND_POSTGRES
from tests.reliability.workers import Workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres, pytest.mark.chaos,
              ON_SQLITE_AND_POSTGRES]

APP = "tests.apps.durable:app"


@pytest.mark.parametrize("loop", ["asyncio", "trio"])  # the workers' loop
@pytest.mark.parametrize("where", ["between", "middle"])
async def test_a_durable_function_survives_a_sigkilled_worker(
        url: str, pool: Workers, tmp_path: Path, loop: str, where: str) -> None:
    ledger = tmp_path / "ledger.txt"
    ledger.write_text("")
    env = {"DURABLE_LEDGER": str(ledger), "DURABLE_HANG": where, "SONIQ_LOOP": loop}
    producer = Soniq(database_url=url, enqueue_validation="none")
    try:
        job_id = await producer.enqueue("durable.pipeline", n=1)
        first = pool.start(app=APP, **env)
        await wait_for(lambda: "hung" in ledger.read_text().split(), timeout=30,
                       message=f"the first attempt to hang {where} steps")
        first.kill()  # SIGKILL: no shutdown, no give-back; the job is rescued later
        await pool.exit_code(first)
        second = pool.start(app=APP, **env)
        record = await wait_for_status(producer, job_id, "done", "dead_letter", timeout=30)
        await pool.stop(second)
    finally:
        await producer.close()
    assert record["status"] == "done", record["errors"]
    assert record["result"] == [2, 20, 25]
    runs = Counter(line for line in ledger.read_text().split() if line != "hung")
    interrupted = {"between": 1, "middle": 2}[where]  # the step it was killed in runs again
    assert runs == {"first": 1, "second": interrupted, "third": 1}
    assert [e["type"] for e in record["errors"]] == ["WorkerLost"]
