"""Dedup keys resolved for an insert: the one decision every backend makes the same way, inside
its write (PostgreSQL: in one transaction with the key rows locked; SQLite: in its write
transaction; memory: under its lock).

A key's row (``soniq_unique_keys``: key, job_id, expires_at) names the job that last took it and,
for ``unique_for``, until when it blocks whatever that job's status. A new job with the key is
*blocked* while

- ``expires_at`` is in the future (its ``unique_for`` window: even after the job finished or was
  pruned), or
- the standing job's status is one of the new job's ``unique_while`` statuses (``"queued"``
  covers ``"waiting"``, a job whose dependencies have not finished).

Otherwise the new job is inserted and takes the key (``expires_at``: now + its ``unique_for``).
A blocked job is not inserted: with ``on_conflict="keep"`` (and whenever the standing job has
started) the call's answer is the standing job's id; with ``"replace"`` a standing job that has not
started gets the new job's arguments and ``scheduled_at`` (no later than its ``created_at`` +
``max_delay``) and its id is the answer. Jobs of one call are resolved in order, each against what
the ones before it left. Key rows whose window passed and whose job has ended or is gone carry no
information; ``prune_control`` deletes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

from soniq.types import Uniqueness

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from soniq.types import NewJob

__all__ = ["ALIVE", "NOT_STARTED", "Plan", "Standing", "plan"]

#: A standing job in one of these may be replaced (it has not started).
NOT_STARTED = ("waiting", "queued")
#: A key whose job is in one of these may still block by status (it is not pruned).
ALIVE = (*NOT_STARTED, "processing")

_DEFAULT = Uniqueness()


class Standing(NamedTuple):
    """A key's row as stored, with its job: ``status`` and ``created_at`` are None when the
    job is gone (deleted or pruned)."""

    job_id: str
    expires_at: datetime | None
    status: str | None
    created_at: datetime | None


@dataclass(slots=True)
class Plan:
    """What an insert writes: ``ids`` (the answer, per input job), ``insert`` (the new jobs, in
    input order, jobs without a key among them), ``take`` (key -> (job id, expires_at)) and
    ``replace`` (the id of a stored job that has not started -> (args, scheduled_at))."""

    ids: list[str] = field(default_factory=list)
    insert: list[NewJob] = field(default_factory=list)
    take: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)
    replace: dict[str, tuple[str, datetime]] = field(default_factory=dict)


def plan(jobs: Sequence[NewJob], standing: Mapping[str, Standing], now: datetime) -> Plan:
    """Resolve ``jobs`` against the ``standing`` rows of their keys (keys without a row are
    free) at ``now`` (the database's clock)."""
    out = Plan()
    rows = dict(standing)
    new: dict[str, int] = {}  # id of a job of this call -> its place in out.insert
    for job in jobs:
        key = job.dedup_key
        if key is None:
            out.ids.append(job.id)
            out.insert.append(job)
            continue
        policy = job.unique or _DEFAULT
        row = rows.get(key)
        if row is None or not _blocks(row, policy, now):
            window = None if policy.window is None else now + timedelta(seconds=policy.window)
            rows[key] = Standing(job.id, window, "waiting" if job.depends_on else "queued", now)
            out.take[key] = (job.id, window)
            new[job.id] = len(out.insert)
            out.ids.append(job.id)
            out.insert.append(job)
            continue
        out.ids.append(row.job_id)
        if policy.replace and row.status in NOT_STARTED and row.created_at is not None:
            at = job.scheduled_at or now
            if policy.max_delay is not None:
                at = min(at, row.created_at + timedelta(seconds=policy.max_delay))
            if row.job_id in new:
                place = new[row.job_id]
                out.insert[place] = out.insert[place]._replace(args=job.args, scheduled_at=at)
            else:
                out.replace[row.job_id] = (job.args, at)
    return out


def _blocks(row: Standing, policy: Uniqueness, now: datetime) -> bool:
    if row.expires_at is not None and row.expires_at > now:
        return True
    status = "queued" if row.status == "waiting" else row.status
    return status is not None and status in policy.blocking
