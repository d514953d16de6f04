"""The finisher's writes under cancellation: a write in flight completes, so shutdown never leaves
an outcome whose fate is unknown (and then re-sends it and calls the refusal a lost lease). An
outcome the database can never store is split off its batch and replaced, so it blocks no other
outcome; a transient error keeps the whole batch for the next flush."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import anyio
import pytest

from soniq.backends.memory import MemoryBackend
from soniq.errors import DatabaseError, DataRejectedError
from soniq.ids import new_id
from soniq.runtime.finisher import Finisher
from soniq.serialization import dumps
from soniq.types import ClaimedJob, JobOutcome, JobStatus, NewJob

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


class RefusesPoison(MemoryBackend):
    """The memory backend, refusing (as a database does, whole) any batch holding a ``"poison"``
    result, and failing the next ``transient`` writes as a lost connection would."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []  # the size of each batch sent
        self.transient = 0

    async def complete_jobs(self, outcomes: Sequence[JobOutcome],
                            *, now: datetime | None = None) -> list[str]:
        self.writes.append(len(outcomes))
        if self.transient:
            self.transient -= 1
            raise DatabaseError("connection lost")
        if any(o.result == '"poison"' for o in outcomes):
            raise DataRejectedError("value too long for its column")
        return await super().complete_jobs(outcomes, now=now)


async def claimed_jobs(backend: MemoryBackend, count: int) -> list[ClaimedJob]:
    await backend.insert_jobs([NewJob(id=new_id(), job_name="j", queue="default", priority=0,
                                      args="{}", max_attempts=3, scheduled_at=None, dedup_key=None)
                               for _ in range(count)])
    return await backend.claim_jobs(new_id(), None, count)


def failed_instead(outcome: JobOutcome, reason: str) -> JobOutcome:
    error = dumps({"type": "ResultNotStored", "message": f"result could not be stored: {reason}"})
    return JobOutcome(outcome.job_id, outcome.lease_id, JobStatus.DEAD_LETTER, error=error)


async def test_an_unstorable_outcome_is_written_apart_and_the_others_are_written() -> None:
    backend = RefusesPoison()
    jobs = await claimed_jobs(backend, 64)
    poisoned = jobs[37]
    finisher = Finisher(backend)
    finisher.on_unstorable = failed_instead
    for job in jobs:
        result = '"poison"' if job is poisoned else '"ok"'
        finisher.put(JobOutcome(job.id, job.lease_id, JobStatus.DONE, result=result))
    await finisher.flush()
    assert finisher.buffered == 0 and finisher.lease_lost == 0 and finisher.dropped == 0
    for job in jobs:
        record = await backend.get_job(job.id)
        assert record is not None
        if job is poisoned:
            assert record["status"] == "dead_letter"
            assert record["errors"][-1]["message"] == (
                "result could not be stored: value too long for its column")
        else:
            assert (record["status"], record["result"]) == ("done", "ok")
    # Halves, not one write per outcome: the whole batch, then about two writes per halving.
    assert backend.writes[0] == 64 and len(backend.writes) <= 1 + 2 * 6 + 1


async def test_an_outcome_refused_with_nothing_to_write_instead_is_dropped_alone() -> None:
    backend = RefusesPoison()
    poisoned, fine = await claimed_jobs(backend, 2)
    finisher = Finisher(backend)  # no on_unstorable: nothing to write instead
    finisher.put(JobOutcome(poisoned.id, poisoned.lease_id, JobStatus.DONE, result='"poison"'))
    finisher.put(JobOutcome(fine.id, fine.lease_id, JobStatus.DONE, result='"ok"'))
    await finisher.flush()
    assert (finisher.buffered, finisher.dropped, finisher.lease_lost) == (0, 1, 0)
    record = await backend.get_job(fine.id)
    assert record is not None and record["status"] == "done"


async def test_a_transient_error_keeps_the_whole_batch_for_the_next_flush() -> None:
    backend = RefusesPoison()
    jobs = await claimed_jobs(backend, 8)
    finisher = Finisher(backend)
    finisher.on_unstorable = failed_instead
    for job in jobs:
        finisher.put(JobOutcome(job.id, job.lease_id, JobStatus.DONE, result='"ok"'))
    backend.transient = 1
    with pytest.raises(DatabaseError) as raised:
        await finisher.flush()
    assert not isinstance(raised.value, DataRejectedError)
    assert finisher.buffered == 8 and backend.writes == [8]  # kept whole, not split
    await finisher.flush()
    assert finisher.buffered == 0 and backend.writes == [8, 8]
    for job in jobs:
        record = await backend.get_job(job.id)
        assert record is not None and record["status"] == "done"


async def test_a_transient_error_while_splitting_keeps_what_is_not_written_yet() -> None:
    backend = RefusesPoison()
    jobs = await claimed_jobs(backend, 8)
    finisher = Finisher(backend)
    finisher.on_unstorable = failed_instead
    for index, job in enumerate(jobs):
        result = '"poison"' if index == 6 else '"ok"'
        finisher.put(JobOutcome(job.id, job.lease_id, JobStatus.DONE, result=result))
    original = backend.complete_jobs

    async def lose_the_second_half(outcomes: Sequence[JobOutcome],
                                   *, now: datetime | None = None) -> list[str]:
        if len(backend.writes) == 2:  # the whole batch was refused, the first half written
            backend.transient = 1
        return await original(outcomes, now=now)

    backend.complete_jobs = lose_the_second_half  # type: ignore[method-assign]
    with pytest.raises(DatabaseError):
        await finisher.flush()
    assert backend.writes == [8, 4, 4] and finisher.buffered == 4  # the first half is out
    await finisher.flush()
    assert finisher.buffered == 0 and finisher.lease_lost == 0
    statuses = []
    for job in jobs:
        record = await backend.get_job(job.id)
        assert record is not None
        statuses.append(record["status"])
    assert statuses == ["done"] * 6 + ["dead_letter", "done"]
