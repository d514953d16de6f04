"""Feature stores of :class:`~soniq.backends.memory.MemoryBackend`: the reference semantics of
:mod:`soniq.backends.stores` over the memory backend's rows.

Like the backend itself, no method awaits between reading and writing, so each is atomic under
any AnyIO backend.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from soniq.backends.base import job_record
from soniq.backends.definitions import stored_definition
from soniq.backends.stores import (
    FIRE_RETENTION,
    JobDefinition,
    JobLogRecord,
    JobSearch,
    QueueCounts,
    ScheduleDefinition,
    ScheduleRecord,
    StatsBucket,
    StorageHealth,
    StoredDefinition,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookMessage,
    fan_out,
)
from soniq.serialization import utc_now
from soniq.types import JobRecord, JobStatus, NewJob, QueueStats

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Collection, Sequence

__all__ = ["MemoryDashboardStore", "MemoryDeadLetterStore", "MemoryDefinitionStore",
           "MemoryLogStore", "MemoryScheduleStore", "MemoryWebhookStore"]

_DEAD = JobStatus.DEAD_LETTER.value
_EPOCH = datetime.min.replace(tzinfo=UTC)


class MemoryDeadLetterStore:
    """The dead-letter queue over the memory backend's ``rows`` (id -> row dict); ``notify`` is
    the backend's in-process NOTIFY."""

    def __init__(self, rows: dict[str, dict[str, Any]], notify: Callable[[str, str], None],
                 park: Callable[[dict[str, Any]], None]) -> None:
        self._rows = rows
        self._notify = notify
        self._park = park

    def _matching(self, queue: str | None, job_name: str | None,
                  since: datetime | None) -> list[dict[str, Any]]:
        rows = [
            row for row in self._rows.values()
            if row["status"] == _DEAD
            and (queue is None or row["queue"] == queue)
            and (job_name is None or row["job_name"] == job_name)
            and (since is None or (row["finished_at"] is not None and row["finished_at"] >= since))
        ]
        rows.sort(key=lambda row: (row["finished_at"] or _EPOCH, row["id"]), reverse=True)
        return rows

    def _dead_row(self, job_id: str) -> dict[str, Any] | None:
        row = self._rows.get(job_id) if isinstance(job_id, str) else None
        return row if row is not None and row["status"] == _DEAD else None

    async def list_dead(self, *, queue: str | None, job_name: str | None,
                        since: datetime | None, limit: int, offset: int) -> list[JobRecord]:
        rows = self._matching(queue, job_name, since)
        return [job_record(row) for row in rows[offset:offset + limit]]

    async def get_dead(self, job_id: str) -> JobRecord | None:
        row = self._dead_row(job_id)
        return None if row is None else job_record(row)

    async def count_dead(self, *, queue: str | None, job_name: str | None) -> int:
        return len(self._matching(queue, job_name, None))

    async def replay(self, job_id: str) -> str | None:
        row = self._dead_row(job_id)
        if row is None:
            return None
        self._requeue(row, utc_now())
        self._notify("soniq_jobs", row["queue"])
        return str(row["queue"])

    async def replay_matching(self, *, queue: str | None, job_name: str | None,
                              since: datetime | None, limit: int | None) -> list[tuple[str, str]]:
        rows = self._matching(queue, job_name, since)
        if limit is not None:
            rows = rows[:limit]
        now = utc_now()
        for row in rows:
            self._requeue(row, now)
        for woken in sorted({row["queue"] for row in rows}):
            self._notify("soniq_jobs", woken)
        return [(row["id"], row["queue"]) for row in rows]

    async def delete_dead(self, job_id: str) -> bool:
        if self._dead_row(job_id) is None:
            return False
        del self._rows[job_id]
        return True

    async def purge(self, *, finished_before: datetime | None) -> int:
        doomed = [
            job_id for job_id, row in self._rows.items()
            if row["status"] == _DEAD
            and (finished_before is None
                 or (row["finished_at"] is not None and row["finished_at"] < finished_before))
        ]
        for job_id in doomed:
            del self._rows[job_id]
        return len(doomed)

    def _requeue(self, row: dict[str, Any], now: datetime) -> None:
        # A dead-lettered row holds no dedup key (it released it when first claimed). A limited
        # one comes back parked: a hand-over or the reconciliation gives it a slot. It starts
        # afresh: no progress, no checkpoint.
        row.update(status=JobStatus.QUEUED.value, attempts=0, scheduled_at=now, updated_at=now,
                   started_at=None, finished_at=None, expires_at=None, result=None,
                   worker_id=None, lease_id=None, cancel_requested=False, progress=None,
                   checkpoint=None)
        if row["concurrency_key"] is not None:
            self._park(row)


class MemoryScheduleStore:
    """Schedules in process memory. ``insert_jobs`` is the backend's own insert, which never
    suspends, so :meth:`fire` runs without a checkpoint between its reads and writes (atomic)."""

    def __init__(self, insert_jobs: Callable[[Sequence[NewJob]], Awaitable[list[str]]]) -> None:
        self._insert_jobs = insert_jobs
        self._schedules: dict[str, ScheduleRecord] = {}
        self._fires: dict[tuple[str, datetime], str] = {}

    async def upsert(self, definition: ScheduleDefinition, *, next_run_at: datetime,
                     now: datetime) -> ScheduleRecord:
        old = self._schedules.get(definition.name)
        fields = {f.name: getattr(definition, f.name)
                  for f in dataclasses.fields(ScheduleDefinition)}
        if old is None:
            record = ScheduleRecord(**fields, paused=False, next_run_at=next_run_at,
                                    last_run_at=None, created_at=now, updated_at=now)
        else:
            same_timing = (old.cron, old.every_seconds, old.timezone) == (
                definition.cron, definition.every_seconds, definition.timezone)
            record = dataclasses.replace(
                old, **fields, updated_at=now,
                next_run_at=old.next_run_at if same_timing else next_run_at)
        self._schedules[definition.name] = record
        return record

    async def get(self, name: str) -> ScheduleRecord | None:
        return self._schedules.get(name)

    async def list(self) -> builtins.list[ScheduleRecord]:
        return [self._schedules[name] for name in sorted(self._schedules)]

    async def delete(self, name: str) -> bool:
        if self._schedules.pop(name, None) is None:
            return False
        for key in [key for key in self._fires if key[0] == name]:
            del self._fires[key]
        return True

    async def set_paused(self, name: str, paused: bool, *, now: datetime) -> bool:
        old = self._schedules.get(name)
        if old is None:
            return False
        self._schedules[name] = dataclasses.replace(old, paused=paused, updated_at=now)
        return True

    async def due(self, now: datetime, *, limit: int,
                  job_names: Collection[str] | None) -> builtins.list[ScheduleRecord]:
        due = [r for r in self._schedules.values() if not r.paused and r.next_run_at <= now
               and (job_names is None or r.job_name in job_names)]
        due.sort(key=lambda r: (r.next_run_at, r.name))
        return due[:limit]

    async def advance(self, name: str, *, expected: datetime, next_run_at: datetime,
                      now: datetime) -> bool:
        old = self._schedules.get(name)
        if old is None or old.next_run_at != expected:
            return False
        self._schedules[name] = dataclasses.replace(old, next_run_at=next_run_at, updated_at=now)
        return True

    async def fire(self, name: str, *, fire_at: datetime, job: NewJob, expected: datetime,
                   next_run_at: datetime, now: datetime) -> str | None:
        old = self._schedules.get(name)
        if (old is None or old.paused or old.next_run_at != expected
                or (name, fire_at) in self._fires):
            return None
        [job_id] = await self._insert_jobs([job])
        cutoff = fire_at - FIRE_RETENTION
        for key in [key for key in self._fires if key[0] == name and key[1] < cutoff]:
            del self._fires[key]
        self._fires[(name, fire_at)] = job_id
        self._schedules[name] = dataclasses.replace(
            old, next_run_at=next_run_at, last_run_at=fire_at, updated_at=now)
        return job_id

    def fired(self, name: str) -> builtins.list[datetime]:
        """The fire times recorded for ``name`` (for tests and inspection)."""
        return sorted(at for key_name, at in self._fires if key_name == name)


class MemoryWebhookStore:
    """Webhook endpoints and deliveries in process memory."""

    def __init__(self) -> None:
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._deliveries: dict[str, WebhookDelivery] = {}

    async def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self._endpoints[endpoint.id] = endpoint

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        return self._endpoints.get(endpoint_id)

    async def list_endpoints(self) -> builtins.list[WebhookEndpoint]:
        return sorted(self._endpoints.values(), key=lambda e: (e.created_at, e.id))

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        if self._endpoints.pop(endpoint_id, None) is None:
            return False
        for key in [k for k, d in self._deliveries.items() if d.endpoint_id == endpoint_id]:
            del self._deliveries[key]
        return True

    async def set_secrets(self, endpoint_id: str, secrets: str, *,
                          expected: str | None = None) -> bool:
        old = self._endpoints.get(endpoint_id)
        if old is None or (expected is not None and old.secrets != expected):
            return False
        self._endpoints[endpoint_id] = dataclasses.replace(old, secrets=secrets)
        return True

    def record_lifecycle(self, events: frozenset[str]) -> frozenset[str]:
        return frozenset()

    async def add_events(self, events: Sequence[WebhookEvent]) -> int:
        return await self.add_messages(events)

    async def add_messages(self, messages: Sequence[WebhookEvent | WebhookMessage]) -> int:
        rows = fan_out(messages, self._endpoints.values())
        self._deliveries.update((row.id, row) for row in rows)
        return len(rows)

    async def claim(self, now: datetime, *, lease_until: datetime,
                    limit: int) -> builtins.list[WebhookDelivery]:
        due = sorted((d for d in self._deliveries.values()
                      if d.status == "pending" and d.next_attempt_at <= now
                      and (d.lease_until is None or d.lease_until <= now)),
                     key=lambda d: (d.next_attempt_at, d.id))[:limit]
        claimed = [dataclasses.replace(d, lease_until=lease_until) for d in due]
        for delivery in claimed:
            self._deliveries[delivery.id] = delivery
        return claimed

    async def finish(self, delivery_id: str, *, lease_until: datetime, status: str,
                     attempts: int, next_attempt_at: datetime, status_code: int | None,
                     error: str | None, delivered_at: datetime | None) -> bool:
        old = self._deliveries.get(delivery_id)
        if old is None or old.lease_until != lease_until:
            return False
        self._deliveries[delivery_id] = dataclasses.replace(
            old, status=status, attempts=attempts, next_attempt_at=next_attempt_at,
            last_status_code=status_code, last_error=error, delivered_at=delivered_at,
            lease_until=None)
        return True

    async def list_deliveries(self, *, endpoint_id: str | None, status: str | None,
                              limit: int) -> builtins.list[WebhookDelivery]:
        found = [d for d in self._deliveries.values()
                 if (endpoint_id is None or d.endpoint_id == endpoint_id)
                 and (status is None or d.status == status)]
        found.sort(key=lambda d: (d.created_at, d.id), reverse=True)
        return found[:limit]

    async def prune_deliveries(self, *, before: datetime) -> int:
        finished = [key for key, d in self._deliveries.items()
                    if d.status != "pending" and d.next_attempt_at < before]
        for key in finished:
            del self._deliveries[key]
        return len(finished)


class MemoryLogStore:
    """Job logs in process memory, over the memory backend's ``rows``: a job's records go away
    with its row (orphans are dropped on every write and read)."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self._rows = rows
        self._records: list[JobLogRecord] = []
        self._next_id = 1

    def _drop_orphans(self) -> None:
        if any(record.job_id not in self._rows for record in self._records):
            self._records = [r for r in self._records if r.job_id in self._rows]

    async def insert_logs(self, records: Sequence[JobLogRecord]) -> int:
        self._drop_orphans()
        written = 0
        for record in records:
            if record.job_id in self._rows:
                self._records.append(dataclasses.replace(record, id=self._next_id))
                self._next_id += 1
                written += 1
        return written

    async def for_job(self, job_id: str) -> builtins.list[JobLogRecord]:
        self._drop_orphans()
        return [record for record in self._records if record.job_id == job_id]

    async def search(self, query: str | None, *, job_id: str | None, min_levelno: int | None,
                     since: datetime | None, limit: int) -> builtins.list[JobLogRecord]:
        self._drop_orphans()
        needle = (query or "").lower()
        found = [
            record for record in reversed(self._records)
            if needle in record.message.lower()
            and (job_id is None or record.job_id == job_id)
            and (min_levelno is None or record.levelno >= min_levelno)
            and (since is None or record.created_at >= since)
        ]
        return found[:limit]


_FINAL = ("done", "dead_letter", "cancelled")


class MemoryDashboardStore:
    """The dashboard's reads and per-minute rollups over the memory backend's ``rows``."""

    def __init__(self, rows: dict[str, dict[str, Any]],
                 queue_stats: Callable[[], Awaitable[builtins.list[QueueStats]]]) -> None:
        self._rows = rows
        self._queue_stats = queue_stats
        self._buckets: dict[tuple[datetime, str], dict[str, int]] = {}

    async def search_jobs(self, *, queue: str | None, status: str | None, job_name: str | None,
                          since: datetime | None, until: datetime | None, before: str | None,
                          limit: int, scan_limit: int) -> JobSearch:
        needle = job_name.lower() if job_name else None
        recent = sorted((row for row in self._rows.values()
                         if before is None or row["id"] < before),
                        key=lambda row: row["id"], reverse=True)[:scan_limit]
        rows = [
            row for row in recent
            if (queue is None or row["queue"] == queue)
            and (status is None or row["status"] == status)
            and (needle is None or needle in row["job_name"].lower())
            and (since is None or row["created_at"] >= since)
            and (until is None or row["created_at"] < until)
        ][:limit]
        stopped = len(rows) < limit and len(recent) == scan_limit
        return JobSearch([job_record(row) for row in rows],
                         scanned_to=recent[-1]["id"] if stopped else None)

    async def queue_counts(self, *, exact_up_to: int) -> QueueCounts:
        return QueueCounts(await self._queue_stats())

    async def rollup(self, *, since: datetime, keep_after: datetime) -> None:
        counts: dict[tuple[datetime, str], dict[str, int]] = {}
        for row in self._rows.values():
            finished = row["finished_at"]
            if row["status"] in _FINAL and finished is not None and finished >= since:
                key = (finished.replace(second=0, microsecond=0), row["queue"])
                bucket = counts.setdefault(key, dict.fromkeys(_FINAL, 0))
                bucket[row["status"]] += 1
        for key, bucket in counts.items():
            stored = self._buckets.setdefault(key, dict.fromkeys(_FINAL, 0))
            for status, count in bucket.items():
                stored[status] = max(stored[status], count)
        for key in [key for key in self._buckets if key[0] < keep_after]:
            del self._buckets[key]

    async def stats(self, *, since: datetime) -> builtins.list[StatsBucket]:
        return [
            StatsBucket(bucket=minute, queue=queue, done=c["done"], dead_letter=c["dead_letter"],
                        cancelled=c["cancelled"])
            for (minute, queue), c in sorted(self._buckets.items()) if minute >= since
        ]

    async def health(self) -> StorageHealth:
        return StorageHealth(schema_version=None, jobs_table_bytes=None,
                             jobs_rows=len(self._rows), dead_tuples=None)


class MemoryDefinitionStore:
    """Job definitions as rows keyed by ``(name, digest)``, read back through the same checks as
    the SQL stores' rows."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    async def upsert(self, definitions: Sequence[JobDefinition], *,
                     now: datetime | None = None) -> None:
        now = now or utc_now()
        for d in definitions:
            row = self.rows.get((d.name, d.digest))
            if row is not None:
                row["last_seen_at"] = max(row["last_seen_at"], now)
                continue
            self.rows[(d.name, d.digest)] = {
                "name": d.name, "digest": d.digest, "queue": d.queue, "priority": d.priority,
                "max_attempts": d.max_attempts, "timeout": d.timeout, "encrypt": d.encrypt,
                "options": dict(d.options), "first_seen_at": now, "last_seen_at": now}

    async def list(self, name: str | None = None) -> builtins.list[StoredDefinition]:
        rows = [row for key, row in self.rows.items() if name is None or key[0] == name]
        rows.sort(key=lambda r: (str(r.get("name")), str(r.get("first_seen_at")),
                                 str(r.get("digest"))))
        return [d for d in map(stored_definition, rows) if d is not None]
