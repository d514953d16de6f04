"""A checkpoint survives a SIGKILLed ``soniq worker`` (a real subprocess): the job's next attempt,
on another worker after the rescue, reads it."""

from __future__ import annotations

import pytest

from soniq import Soniq
from tests.helpers import wait_for, wait_for_status
from tests.reliability.conftest import ON_SQLITE_AND_POSTGRES
from tests.reliability.workers import Workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres, pytest.mark.chaos,
              ON_SQLITE_AND_POSTGRES]

APP = "tests.apps.resumable:app"


async def test_a_checkpoint_survives_a_sigkilled_worker(url: str, pool: Workers) -> None:
    producer = Soniq(database_url=url, enqueue_validation="none")
    try:
        job_id = await producer.enqueue("resumable.crawl")
        first = pool.start(app=APP)

        async def checkpointed() -> bool:
            record = await producer.get_job(job_id)
            return record is not None and record["progress"] == 50
        await wait_for(checkpointed, timeout=30, message="the first attempt's checkpoint")
        first.kill()  # SIGKILL: no shutdown, no give-back; the job is rescued later
        await pool.exit_code(first)
        second = pool.start(app=APP)
        record = await wait_for_status(producer, job_id, "done", timeout=30)
        assert record["result"] == {"resumed_from": {"next_page": 3, "seen": ["a", "b", "c"]},
                                    "attempt": 2}
        assert [e["type"] for e in record["errors"]] == ["WorkerLost"]
        await pool.stop(second)
    finally:
        await producer.close()
