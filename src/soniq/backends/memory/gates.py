"""Queue limits and rate limits of the memory backend: the reference semantics of which due
jobs a claim may start (see ``StorageBackend.claim_jobs`` and ARCHITECTURE.md, "Rate limits").

A queue with a stored ``concurrency_limit`` or ``rate_limit`` (and not paused) is *gated*: its
jobs start only through the gate, for callers that name it in ``limited``. A row with a
``rate_key`` starts only for callers whose ``rates`` name its job, with a token of the bucket
(job name, key). Buckets are full until a start takes a token (:meth:`soniq.limits.Rate.tokens`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from soniq.limits import LONGEST_PERIOD, parse_rate
from soniq.types import JobStatus

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from soniq.backends.memory.control import MemoryQueueStore
    from soniq.limits import RateGate

__all__ = ["Bucket", "Gates"]


@dataclass
class Bucket:
    """A job rate bucket: tokens as of ``refilled_at`` (None: full), held until
    ``blocked_until`` (a job raised ``RateLimited``)."""

    tokens: float | None = None
    refilled_at: datetime | None = None
    blocked_until: datetime | None = None


class Gates:
    """The gates over the backend's ``rows`` (id -> row dict) and its queue settings."""

    def __init__(self, rows: dict[str, dict[str, Any]], queues: MemoryQueueStore) -> None:
        self._rows = rows
        self._queues = queues
        self.buckets: dict[tuple[str, str], Bucket] = {}

    def pick(self, due: Sequence[dict[str, Any]], limit: int, now: datetime,
             limited: frozenset[str], rates: Sequence[RateGate]) -> list[dict[str, Any]]:
        """The rows of ``due`` (claimable, in claim order, of unpaused wanted queues) to start
        now, at most ``limit``: gated and rate-limited ones first, then plain ones with the rest.
        Takes the tokens of the gated ones started."""
        gated = {name: setting for name, setting in self._queues.settings.items()
                 if setting.gated}
        gates = {gate.job_name: gate.rate for gate in rates}
        plain = [row for row in due if row["rate_key"] is None and row["queue"] not in gated]
        chosen: list[dict[str, Any]] = []
        room: dict[object, float] = {}  # starts still allowed per queue / bucket
        tokens: dict[object, float] = {}  # tokens before this claim
        started: Counter[object] = Counter()
        processing: Counter[str] | None = None
        for row in due:
            if len(chosen) >= limit:
                break
            group: object
            if row["rate_key"] is not None:
                rate = gates.get(row["job_name"])
                if rate is None:
                    continue
                group = (row["job_name"], row["rate_key"])
                if group not in room:
                    bucket = self.buckets.get(group) or Bucket()
                    held = bucket.blocked_until is not None and bucket.blocked_until > now
                    now_tokens = rate.tokens(bucket.tokens, bucket.refilled_at, now)
                    tokens[group] = now_tokens
                    room[group] = 0 if held else math.floor(now_tokens)
            elif row["queue"] in gated:
                group = row["queue"]
                if group not in limited:
                    continue
                if group not in room:
                    if processing is None:
                        processing = Counter(r["queue"] for r in self._rows.values()
                                             if r["status"] == JobStatus.PROCESSING)
                    room[group] = self._queue_room(group, now, processing[group], tokens)
            else:
                continue
            if room[group] >= 1:
                room[group] -= 1
                started[group] += 1
                chosen.append(row)
        self._take(started, tokens, now)
        return chosen + plain[:max(0, limit - len(chosen))]

    def _queue_room(self, name: str, now: datetime, processing: int,
                    tokens: dict[object, float]) -> float:
        """How many jobs gated queue ``name`` may start now (noting its tokens)."""
        setting = self._queues.settings[name]
        room = math.inf
        if setting.concurrency_limit is not None:
            room = setting.concurrency_limit - processing
        rate = parse_rate(setting.rate_limit)
        if rate is not None:
            stored, refilled_at = self._queues.buckets.get(name, (None, None))
            now_tokens = rate.tokens(stored, refilled_at, now)
            tokens[name] = now_tokens
            room = min(room, math.floor(now_tokens))
        return room

    def _take(self, started: Counter[object], tokens: dict[object, float],
              now: datetime) -> None:
        """Store the buckets that gave tokens to this claim's starts."""
        for group, count in started.items():
            if group not in tokens:
                continue
            left = tokens[group] - count
            if isinstance(group, tuple):
                bucket = self.buckets.setdefault(group, Bucket())
                bucket.tokens, bucket.refilled_at = left, now
            elif isinstance(group, str):
                self._queues.buckets[group] = (left, now)

    def prune(self, now: datetime) -> int:
        """Forget the buckets full again (last refilled :data:`~soniq.limits.LONGEST_PERIOD`
        ago or never), not held, whose key has no queued rate-limited job; how many."""
        stale = now - timedelta(seconds=LONGEST_PERIOD)
        waiting = {(row["job_name"], row["rate_key"]) for row in self._rows.values()
                   if row["status"] == JobStatus.QUEUED and row["hold"] is None
                   and row["rate_key"] is not None}
        full = [group for group, bucket in self.buckets.items()
                if (bucket.refilled_at is None or bucket.refilled_at < stale)
                and (bucket.blocked_until is None or bucket.blocked_until <= now)
                and group not in waiting]
        for group in full:
            del self.buckets[group]
        return len(full)

    def hold(self, job_name: str, key: str, until: datetime) -> None:
        """Hold bucket (``job_name``, ``key``) until ``until`` (or its later stored hold)."""
        bucket = self.buckets.setdefault((job_name, key), Bucket())
        if bucket.blocked_until is None or bucket.blocked_until < until:
            bucket.blocked_until = until
