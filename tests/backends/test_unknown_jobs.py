"""The storage contract of rolling deploys, on memory, SQLite and PostgreSQL under asyncio and
trio: ``claim_jobs(unknown=...)`` never returns a job of those names, whichever claim shape the
backend picks (all queues, one, several, with a paused queue known, a gated queue), and
``dead_letter_unknown`` ends only queued jobs due for the grace whose name is not known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from soniq.backends.base import StorageBackend
from soniq.ids import new_id
from soniq.serialization import dumps
from soniq.types import AuditEntry, JobOutcome, JobStatus, NewJob

pytestmark = pytest.mark.anyio

WORKER = "00000000-0000-7000-8000-000000000002"
NEW = "deploy.new"  # the name the claiming worker met and did not register


def _job(name: str, queue: str, *, priority: int = 100, at: datetime | None = None) -> NewJob:
    return NewJob(id=new_id(), job_name=name, queue=queue, priority=priority, args=dumps({}),
                  max_attempts=3, scheduled_at=at)


#: (queues, claim_jobs options): each claim shape a backend may pick.
SHAPES: list[tuple[list[str] | None, dict[str, Any]]] = [
    (None, {}),
    (None, {"paused": frozenset({"elsewhere"})}),
    (["q2"], {}),
    (["q3", "elsewhere"], {}),
    (["q4", "elsewhere"], {"paused": frozenset({"elsewhere"})}),
    (["gated"], {"limited": frozenset({"gated"})}),
]


async def test_claims_never_return_unknown_names(storage: StorageBackend) -> None:
    assert storage.queues is not None
    await storage.queues.set("gated", "concurrency_limit", 10, audit=AuditEntry(
        at=datetime.now(UTC), actor="test", client=None, action="limit", targets=(),
        outcome="ok"))
    left: list[str] = []
    for number, (queues, options) in enumerate(SHAPES):
        queue = "q1" if queues is None else queues[0]
        # The unknown name's jobs come first in claim order: a claim that did not exclude them
        # would take them.
        ahead = [_job(NEW, queue, priority=0) for _ in range(3)]
        mine = _job("deploy.old", queue)
        await storage.insert_jobs([*ahead, mine])
        left += [j.id for j in ahead]
        claimed = await storage.claim_jobs(WORKER, queues, 10, unknown=frozenset({NEW}),
                                           **options)
        assert [(j.id, j.job_name) for j in claimed] == [(mine.id, "deploy.old")], number
    for job_id in left:
        record = await storage.get_job(job_id)
        assert record is not None
        assert (record["status"], record["attempts"]) == ("queued", 0)
    # Without the exclusion they are claimed as usual.
    claimed = await storage.claim_jobs(WORKER, None, 100, limited=frozenset({"gated"}))
    assert sorted(j.id for j in claimed) == sorted(left)


async def test_dead_letter_unknown_ends_only_overdue_queued_jobs_of_unknown_names(
        storage: StorageBackend) -> None:
    now = datetime.now(UTC)
    overdue = now - timedelta(hours=2)
    ended = _job(NEW, "default", at=overdue)
    recent = _job(NEW, "default", at=now - timedelta(minutes=30))
    known = _job("deploy.old", "default", at=overdue)
    running = _job(NEW, "busy", at=overdue)
    await storage.insert_jobs([ended, recent, known, running])
    [claimed] = await storage.claim_jobs(WORKER, ["busy"], 1)
    assert await storage.dead_letter_unknown(["deploy.old"], grace=3600) == [ended.id]
    record = await storage.get_job(ended.id)
    assert record is not None
    assert (record["status"], record["attempts"]) == ("dead_letter", 0)
    assert record["finished_at"] is not None
    [error] = record["errors"]
    assert (error["type"], error["attempt"]) == ("UnknownJob", 0)
    assert error["message"] == ("no live worker has registered job 'deploy.new' for 3600 s "
                                "(unknown_job_grace)")
    assert record["last_error"] == f"UnknownJob: {error['message']}"
    for other in (recent, known):
        assert (await storage.get_job(other.id) or {}).get("status") == "queued"
    assert (await storage.get_job(running.id) or {}).get("status") == "processing"
    # A give-back keeping the job's place keeps its time due: the grace still counts from it.
    await storage.complete_jobs([JobOutcome(claimed.id, claimed.lease_id, JobStatus.QUEUED,
                                            run_at=claimed.scheduled_at, refund_attempt=True)])
    assert await storage.dead_letter_unknown([], grace=3600) == sorted([known.id, running.id])
