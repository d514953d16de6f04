"""The finisher's writes under cancellation: a write in flight completes, so shutdown never leaves
an outcome whose fate is unknown (and then re-sends it and calls the refusal a lost lease)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import anyio
import pytest

from soniq.backends.memory import MemoryBackend
from soniq.runtime.finisher import Finisher
from soniq.types import JobOutcome, JobStatus, NewJob

pytestmark = pytest.mark.anyio


class SlowWrites(MemoryBackend):
    """The memory backend, with every outcome write taking a while (a slow network)."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = anyio.Event()

    async def complete_jobs(self, outcomes: Sequence[JobOutcome],
                            *, now: datetime | None = None) -> list[str]:
        self.writing.set()
        await anyio.sleep(0.2)
        return await super().complete_jobs(outcomes, now=now)


async def test_cancelling_a_flush_mid_write_finishes_that_write(caplog: pytest.LogCaptureFixture) -> None:
    backend = SlowWrites()
    [job_id] = await backend.insert_jobs([NewJob(
        id="01a227ea-8355-7216-9e73-126df9b48cbf", job_name="j", queue="default", priority=0,
        args="{}", max_attempts=3, scheduled_at=None, dedup_key=None)])
    [claimed] = await backend.claim_jobs("01a227ea-8355-7216-9e73-126df9b48cc0", None, 1)
    finisher = Finisher(backend)
    finisher.put(JobOutcome(job_id, claimed.lease_id, JobStatus.DONE))
    async with anyio.create_task_group() as tg:
        tg.start_soon(finisher.flush)
        await backend.writing.wait()
        tg.cancel_scope.cancel()  # shutdown arrives while the write is on the wire
    record = await backend.get_job(job_id)
    assert record is not None and record["status"] == "done"
    assert finisher.buffered == 0
    await finisher.flush()  # nothing to re-send, nothing refused
    assert finisher.lease_lost == 0 and "lease lost" not in caplog.text
