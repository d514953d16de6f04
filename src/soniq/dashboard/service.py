"""What the dashboard shows and does, shared by the JSON API and the HTML pages.

Each method parses its query values, calls the public ``Soniq`` API (or the backend's
:class:`~soniq.backends.stores.DashboardStore` for the reads the facade has no method for) and
returns plain data. Bad input raises :class:`~soniq.errors.ValidationError` (a 400).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, cast
from urllib.parse import urlencode

import anyio.to_thread
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException

from soniq.backends.stores import DashboardStore
from soniq.dashboard.graph import MAX_DRAWN
from soniq.errors import UnsupportedOperationError, ValidationError
from soniq.features.queues import queue_infos
from soniq.features.workflows import WORKFLOW_STATUSES
from soniq.ids import is_uuid
from soniq.registry import validate_name
from soniq.serialization import utc_now
from soniq.types import JobStatus

if TYPE_CHECKING:
    from soniq.app import Soniq
    from soniq.backends.stores import StatsBucket
    from soniq.dashboard.live import LiveHub
    from soniq.dashboard.security import AuditLog, WriteAccess
    from soniq.types import JobCoverage, JobRecord

__all__ = ["MAX_PAGE", "Dash", "DashboardService", "JobFilter", "parse_limit"]

#: The largest page any list returns.
MAX_PAGE = 200
DEFAULT_PAGE = 50
#: The most jobs one job search examines (newest first from its cursor), whatever the filters;
#: when a page does not fill within them, its next cursor continues past them.
SEARCH_SCAN_LIMIT = 50_000
#: Above about this many rows (the planner's estimate) PostgreSQL counts are estimated.
EXACT_COUNTS_UP_TO = 200_000
#: The most of a job's arguments or result a page or the job API shows; the rest is served by
#: ``/api/jobs/{id}/args`` and ``/api/jobs/{id}/result``.
SHOWN_BYTES = 64 * 1024
#: The deepest offset a list accepts (deeper ones make the database walk that many rows).
MAX_OFFSET = 100_000
STATUSES = tuple(status.value for status in JobStatus)
_RELATIVE = re.compile(r"(\d{1,6})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str | None, label: str, *, now: datetime | None = None) -> datetime | None:
    """An ISO 8601 time (naive means UTC) or a span back from now such as ``15m``, ``24h``,
    ``7d``; None for empty."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    relative = _RELATIVE.fullmatch(value)
    try:
        if relative:
            seconds = int(relative[1]) * _UNITS[relative[2]]
            return (now or utc_now()) - timedelta(seconds=seconds)
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise ValidationError(
            f"{label} must be an ISO 8601 time or a span like 15m, 24h, 7d; got {value!r}"
        ) from None
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise ValidationError(
            f"{label} is out of range (years 1 to 9999 in UTC); got {value!r}") from None


def parse_limit(value: int | None, default: int = DEFAULT_PAGE) -> int:
    if value is None:
        return default
    if not 1 <= value <= MAX_PAGE:
        raise ValidationError(f"limit must be from 1 to {MAX_PAGE}, got {value}")
    return value


def parse_offset(value: int | None) -> int:
    if value is None:
        return 0
    if not 0 <= value <= MAX_OFFSET:
        raise ValidationError(f"offset must be from 0 to {MAX_OFFSET}, got {value}; "
                              "narrow the list with the queue or name filter")
    return value


def _blank(value: str | None) -> str | None:
    return value.strip() if value is not None and value.strip() else None


@dataclass(frozen=True, slots=True)
class JobFilter:
    """The job list's filters, as they appear in the URL."""

    queue: str | None = None
    status: str | None = None
    name: str | None = None
    since: str | None = None
    until: str | None = None
    before: str | None = None
    limit: int = DEFAULT_PAGE
    parsed: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, *, queue: str | None = None, status: str | None = None,
              name: str | None = None, since: str | None = None, until: str | None = None,
              before: str | None = None, limit: int | None = None) -> JobFilter:
        queue, status, name = _blank(queue), _blank(status), _blank(name)
        since, until, before = _blank(since), _blank(until), _blank(before)
        if queue is not None:
            validate_name(queue, "queue name")
        if status is not None and status not in STATUSES:
            raise ValidationError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        if name is not None and len(name) > 128:
            raise ValidationError("name filter must be at most 128 characters")
        if before is not None and not is_uuid(before):
            raise ValidationError(f"before must be a job id (the cursor of the next page), "
                                  f"got {before!r}")
        now = utc_now()
        parsed = {"since": parse_time(since, "since", now=now),
                  "until": parse_time(until, "until", now=now)}
        return cls(queue=queue, status=status, name=name, since=since, until=until,
                   before=before, limit=parse_limit(limit), parsed=parsed)

    def query(self, **changes: Any) -> str:
        """This filter as a URL query string (with ``changes`` applied; None drops a key)."""
        values = {"queue": self.queue, "status": self.status, "name": self.name,
                  "since": self.since, "until": self.until, "before": self.before,
                  "limit": None if self.limit == DEFAULT_PAGE else self.limit}
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "status": self.status, "name": self.name,
                "since": self.since, "until": self.until, "before": self.before,
                "limit": self.limit}


def _series(buckets: list[StatsBucket], *, start: datetime, step: timedelta,
            count: int) -> list[dict[str, Any]]:
    """``count`` bins of ``step`` from ``start``: finished (done), failed (dead-lettered) and
    cancelled jobs summed over queues."""
    done, failed, cancelled = [0] * count, [0] * count, [0] * count
    for bucket in buckets:
        index = int((bucket.bucket - start) / step)
        if 0 <= index < count:
            done[index] += bucket.done
            failed[index] += bucket.dead_letter
            cancelled[index] += bucket.cancelled
    return [{"at": start + step * i, "done": done[i], "failed": failed[i],
             "cancelled": cancelled[i]} for i in range(count)]


class DashboardService:
    """One dashboard's view of one ``Soniq`` app."""

    def __init__(self, soniq: Soniq, *, access: WriteAccess, audit: AuditLog, hub: LiveHub,
                 search_scan_limit: int = SEARCH_SCAN_LIMIT) -> None:
        self.soniq = soniq
        self.access = access
        self.audit = audit
        self.hub = hub
        self.search_scan_limit = search_scan_limit

    # -- stores -------------------------------------------------------------------------------
    @property
    def store(self) -> DashboardStore:
        store = self.soniq.backend.dashboard
        if store is None:
            raise UnsupportedOperationError(
                f"the {self.soniq.backend.name} backend has no dashboard store "
                "(backend.dashboard); use the memory, sqlite or postgres backend")
        return store

    # -- overview -----------------------------------------------------------------------------
    async def overview(self) -> dict[str, Any]:
        counts = await self.hub.counts()
        queues = counts["queues"]
        rows = [cast("dict[str, int]", q) for q in queues]
        totals = {key: sum(row[key] for row in rows) for key in ("total", *STATUSES)}
        now = utc_now()
        hour_start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
        day_start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
        await self.soniq.ensure_initialized()
        buckets = await self.store.stats(since=day_start)
        workers = await self.workers()
        return {
            "queues": queues,
            "estimated": counts["estimated"],
            "totals": totals,
            "workers_alive": sum(1 for w in workers if w["alive"]),
            "charts": {
                "hour": _series(buckets, start=hour_start, step=timedelta(minutes=1), count=60),
                "day": _series(buckets, start=day_start, step=timedelta(hours=1), count=24),
            },
            "rolled_up_at": self.hub.rolled_up_at,
        }

    # -- jobs ---------------------------------------------------------------------------------
    async def jobs(self, flt: JobFilter) -> dict[str, Any]:
        """A page of jobs. ``scan_stopped``: the page did not fill within the newest
        ``scan_limit`` jobs examined; ``next_cursor`` then searches on past them."""
        await self.soniq.ensure_initialized()
        found = await self.store.search_jobs(
            queue=flt.queue, status=flt.status, job_name=flt.name, since=flt.parsed["since"],
            until=flt.parsed["until"], before=flt.before, limit=flt.limit + 1,
            scan_limit=self.search_scan_limit)
        more = len(found.jobs) > flt.limit
        rows = found.jobs[:flt.limit]
        stopped = not more and found.scanned_to is not None
        return {"jobs": rows,
                "next_cursor": rows[-1]["id"] if more else found.scanned_to if stopped else None,
                "scan_limit": self.search_scan_limit, "scan_stopped": stopped,
                "filters": flt.as_dict()}

    async def job(self, job_id: str) -> dict[str, Any]:
        """The job with its logs; its arguments and result as :func:`shown_json` pieces, and
        left out of ``job`` (None) when over :data:`SHOWN_BYTES`."""
        record = await self.record(job_id)
        job: dict[str, Any] = dict(record)
        shown = {name: await anyio.to_thread.run_sync(shown_json, job[name])
                 for name in ("args", "result")}
        for name, piece in shown.items():
            if piece["truncated"]:
                job[name] = None
        logs: list[dict[str, Any]] = []
        store = self.soniq.backend.logs
        if store is not None:
            logs = [{"at": r.created_at, "level": r.level, "logger": r.logger,
                     "attempt": r.attempt, "message": r.message, "exception": r.exception}
                    for r in await store.for_job(record["id"])]
        return {"job": job, "shown": shown, "logs": logs, "timings": _timings(record)}

    async def record(self, job_id: str) -> JobRecord:
        record = await self.soniq.get_job(job_id)
        if record is None:
            raise NotFoundException(f"no job with id {job_id!r}")
        return record

    # -- workflows ----------------------------------------------------------------------------
    async def workflows(self, *, status: str | None = None, before: str | None = None,
                        limit: int | None = None) -> dict[str, Any]:
        """A page of workflows and batches, newest first, each with its step counts;
        ``next_cursor`` (the last id) continues with older ones."""
        status, before = _blank(status), _blank(before)
        if status is not None and status not in WORKFLOW_STATUSES:
            raise ValidationError(f"unknown workflow status {status!r}; use one of "
                                  f"{', '.join(WORKFLOW_STATUSES)}")
        if before is not None and not is_uuid(before):
            raise ValidationError(f"before must be a workflow id (the cursor of the next "
                                  f"page), got {before!r}")
        size = parse_limit(limit)
        found = await self.soniq.workflows.list(status=status, limit=size + 1, before=before)
        rows = [{key: value for key, value in info.items() if key != "steps"}
                | {"total": sum(info["counts"].values())} for info in found[:size]]
        return {"workflows": rows,
                "next_cursor": rows[-1]["id"] if len(found) > size else None,
                "filters": {"status": status, "before": before, "limit": size}}

    async def workflow(self, workflow_id: str) -> dict[str, Any]:
        """The workflow with its first :data:`~soniq.dashboard.graph.MAX_DRAWN` steps (all
        its counts); ``truncated`` when it has more."""
        info = await self.soniq.workflows.get(workflow_id, max_steps=MAX_DRAWN)
        if info is None:
            raise NotFoundException(f"no workflow with id {workflow_id!r}")
        total = sum(info["counts"].values())
        return {"workflow": info, "steps_total": total, "steps_shown": len(info["steps"]),
                "truncated": total > len(info["steps"])}

    # -- dead letter --------------------------------------------------------------------------
    async def dead_letter(self, *, queue: str | None, name: str | None, limit: int | None,
                          offset: int | None) -> dict[str, Any]:
        queue, name = _blank(queue), _blank(name)
        size = parse_limit(limit)
        start = parse_offset(offset)
        dlq = self.soniq.dead_letter
        jobs = await dlq.list_jobs(queue=queue, job_name=name, limit=size, offset=start)
        count = await dlq.count(queue=queue, job_name=name)
        return {"jobs": jobs, "count": count, "limit": size, "offset": start,
                "filters": {"queue": queue, "name": name}}

    # -- workers ------------------------------------------------------------------------------
    async def workers(self) -> list[dict[str, Any]]:
        await self.soniq.ensure_initialized()
        rows = await self.soniq.backend.list_workers()
        running = await self.soniq.list_jobs(status=JobStatus.PROCESSING.value, limit=500)
        by_worker: dict[str, list[JobRecord]] = {}
        for job in running:
            if job["worker_id"] is not None:
                by_worker.setdefault(job["worker_id"], []).append(job)
        cutoff = utc_now() - timedelta(seconds=self.soniq.settings.heartbeat_timeout)
        return [{**row, "id": str(row["id"]), "alive": row["last_heartbeat"] >= cutoff,
                 "current_jobs": [{"id": j["id"], "job_name": j["job_name"], "queue": j["queue"],
                                   "started_at": j["started_at"]}
                                  for j in by_worker.get(str(row["id"]), [])]}
                for row in rows]

    async def job_names(self) -> list[JobCoverage]:
        """Per job name, how many live workers know it; ``flagged`` when none does."""
        return await self.soniq.definitions.coverage()

    # -- queues -------------------------------------------------------------------------------
    async def queues(self) -> list[dict[str, Any]]:
        """Every known queue with its settings and its counts (the live feed's, estimated on a
        large PostgreSQL table: see ``estimated``)."""
        counts = await self.hub.counts()
        store = self.soniq.backend.queues
        await self.soniq.ensure_initialized()
        settings = [] if store is None else await store.list()
        return [{**dataclasses.asdict(info), "estimated": counts["estimated"]}
                for info in queue_infos(settings, counts["queues"])]

    # -- schedules ----------------------------------------------------------------------------
    async def schedules(self) -> list[dict[str, Any]]:
        if self.soniq.backend.schedules is None:
            return []
        return await self.soniq.scheduler.list()

    async def run_schedule(self, name: str) -> str | None:
        """Enqueue the schedule's job now (its next fire time stays); the job id or None."""
        schedule = await self.soniq.scheduler.get(name)
        if schedule is None:
            return None
        return await self.soniq.enqueue(schedule["job_name"], args=schedule["args"],
                                        queue=schedule["queue"], priority=schedule["priority"])

    # -- webhooks -----------------------------------------------------------------------------
    async def webhooks(self, *, endpoint: str | None = None, status: str | None = None,
                       limit: int | None = None) -> dict[str, Any]:
        if self.soniq.backend.webhooks is None:
            return {"endpoints": [], "deliveries": []}
        endpoints = await self.soniq.webhooks.list()
        deliveries = await self.soniq.webhooks.deliveries(
            endpoint_id=_blank(endpoint), status=_blank(status), limit=parse_limit(limit))
        return {"endpoints": endpoints, "deliveries": deliveries}

    # -- health -------------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        await self.soniq.ensure_initialized()
        facts = await self.store.health()
        return {
            "status": "ok",
            "backend": self.soniq.backend.name,
            "schema_version": facts.schema_version,
            "jobs_table_bytes": facts.jobs_table_bytes,
            "jobs_rows": facts.jobs_rows,
            "dead_tuples": facts.dead_tuples,
            "listen": self.hub.listen_status,
            "live_clients": self.hub.clients,
            "rolled_up_at": self.hub.rolled_up_at,
            "writes": "api key or loopback" if self.access.has_key else "loopback only",
        }


def shown_json(value: Any, limit: int = SHOWN_BYTES) -> dict[str, Any]:
    """``value`` for display: ``text`` (pretty JSON, or its first ``limit`` bytes of compact
    JSON when larger), ``bytes`` (the size of its compact JSON) and ``truncated``. Run it in a
    worker thread: a large value takes a while."""
    compact = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    size = len(compact.encode())
    if size <= limit:
        text = json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
        return {"text": text, "bytes": size, "truncated": False}
    text = compact.encode()[:limit].decode(errors="ignore")
    return {"text": text, "bytes": size, "truncated": True}


def _timings(record: JobRecord) -> dict[str, float | None]:
    def seconds(start: datetime | None, end: datetime | None) -> float | None:
        return None if start is None or end is None else (end - start).total_seconds()

    return {"waited": seconds(record["scheduled_at"], record["started_at"]),
            "ran": seconds(record["started_at"], record["finished_at"]),
            "total": seconds(record["created_at"], record["finished_at"])}


#: How route handlers ask for the service (injected by name).
Dash: TypeAlias = NamedDependency[DashboardService]
