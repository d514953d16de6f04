"""The dashboard's JSON API (``/api/...``; its OpenAPI schema is ``/api/schema/openapi.json``).

Handlers are thin: parse, call one :class:`~soniq.dashboard.service.DashboardService` or ``Soniq``
method, map the result. Every write route carries :func:`~soniq.dashboard.security.write_guard`
and records its outcome in the audit log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio.to_thread
from litestar import Request, Response, Router, delete, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from soniq.dashboard.security import client_address, write_guard
from soniq.dashboard.service import MAX_PAGE, Dash, JobFilter, parse_limit
from soniq.errors import ValidationError
from soniq.ids import is_uuid
from soniq.types import JobCoverage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from litestar.handlers import HTTPRouteHandler

__all__ = ["api_router"]


@dataclass
class IdList:
    """Job ids for a bulk action (at most 200)."""

    ids: list[str] = field(default_factory=list)


@dataclass
class ReplayMatching:
    """Replay every dead-lettered job matching these filters (all when both are empty)."""

    queue: FromQuery[str | None] = None
    name: FromQuery[str | None] = None
    limit: FromQuery[int | None] = None


async def _record(request: Request[Any, Any, Any], dash: Dash, action: str,
                  targets: list[str], applied: bool | int, detail: str | None = None) -> None:
    await dash.audit.record(actor=str(request.state.get("soniq_actor", "unknown")),
                      client=client_address(request), action=action, targets=targets,
                      outcome="ok" if applied else "not_applied", detail=detail)


def _ids(body: IdList) -> list[str]:
    if not body.ids or len(body.ids) > MAX_PAGE:
        raise ValidationError(f"ids must list 1 to {MAX_PAGE} job ids")
    bad = [i for i in body.ids if not is_uuid(i)]
    if bad:
        raise ValidationError(f"not job ids: {bad[:5]}")
    return list(dict.fromkeys(body.ids))


# -- reads -----------------------------------------------------------------------------------------
@get("/overview", summary="Per-queue counts, totals, workers alive and the throughput charts")
async def overview(dash: Dash) -> dict[str, Any]:
    return await dash.overview()


@get("/queues", summary="Job counts per queue and status; 'estimated' rows have estimated "
     "done, cancelled and total counts (a large PostgreSQL table)")
async def queues(dash: Dash) -> list[dict[str, Any]]:
    counts = await dash.hub.counts()
    return [{**q, "estimated": counts["estimated"]} for q in counts["queues"]]


@get("/queue-settings", summary="Every known queue: paused, its limits and its job counts "
     "('estimated' as in /queues)")
async def queue_settings(dash: Dash) -> list[dict[str, Any]]:
    return await dash.queues()


@get("/jobs", summary="Jobs newest first; cursor pagination with before=<next_cursor>")
async def list_jobs(dash: Dash, queue: FromQuery[str | None] = None, status: FromQuery[str | None] = None,
                    name: FromQuery[str | None] = None, since: FromQuery[str | None] = None, until: FromQuery[str | None] = None,
                    before: FromQuery[str | None] = None, limit: FromQuery[int | None] = None) -> dict[str, Any]:
    flt = JobFilter.parse(queue=queue, status=status, name=name, since=since, until=until,
                          before=before, limit=limit)
    return await dash.jobs(flt)


@get("/jobs/{job_id:str}", summary="One job with its errors, logs and timings; arguments or a "
     "result over 64 KiB are null in 'job' (see 'shown' and /args, /result)")
async def job_detail(dash: Dash, job_id: FromPath[str]) -> dict[str, Any]:
    return await dash.job(job_id)


async def _raw(dash: Dash, job_id: str, name: Literal["args", "result"]) -> Response[bytes]:
    record = await dash.record(job_id)
    body = await anyio.to_thread.run_sync(_encode, record[name])
    return Response(body, media_type="application/json")


def _encode(value: Any) -> bytes:
    return json.dumps(value, default=str, ensure_ascii=False).encode()


@get("/jobs/{job_id:str}/args", summary="A job's arguments, in full, as JSON")
async def job_args(dash: Dash, job_id: FromPath[str]) -> Response[bytes]:
    return await _raw(dash, job_id, "args")


@get("/jobs/{job_id:str}/result", summary="A job's result, in full, as JSON")
async def job_result(dash: Dash, job_id: FromPath[str]) -> Response[bytes]:
    return await _raw(dash, job_id, "result")


@get("/dead-letter", summary="Dead-lettered jobs, newest first")
async def dead_letter(dash: Dash, queue: FromQuery[str | None] = None, name: FromQuery[str | None] = None,
                      limit: FromQuery[int | None] = None, offset: FromQuery[int | None] = None) -> dict[str, Any]:
    return await dash.dead_letter(queue=queue, name=name, limit=limit, offset=offset)


@get("/workers", summary="Registered workers, whether alive, and their running jobs")
async def workers(dash: Dash) -> list[dict[str, Any]]:
    return await dash.workers()


@get("/job-names", summary="Per job name: the queue of its stored definition, how many live "
                          "workers know it, and 'flagged' when none does (its jobs wait)")
async def job_names(dash: Dash) -> list[JobCoverage]:
    return await dash.job_names()


@get("/schedules", summary="Recurring schedules with next and last fire times")
async def schedules(dash: Dash) -> list[dict[str, Any]]:
    return await dash.schedules()


@get("/webhooks", summary="Webhook endpoints (without secrets) and recent deliveries")
async def webhooks(dash: Dash, endpoint: FromQuery[str | None] = None, status: FromQuery[str | None] = None,
                   limit: FromQuery[int | None] = None) -> dict[str, Any]:
    return await dash.webhooks(endpoint=endpoint, status=status, limit=limit)


@get("/workflows", summary="Workflows and batches newest first, with their status and step "
     "counts; cursor pagination with before=<next_cursor>")
async def list_workflows(dash: Dash, status: FromQuery[str | None] = None,
                         before: FromQuery[str | None] = None,
                         limit: FromQuery[int | None] = None) -> dict[str, Any]:
    return await dash.workflows(status=status, before=before, limit=limit)


@get("/workflows/{workflow_id:str}", summary="One workflow or batch with its status, counts "
     "and steps (the first 500, in enqueue order: see 'truncated')")
async def workflow_detail(dash: Dash, workflow_id: FromPath[str]) -> dict[str, Any]:
    return await dash.workflow(workflow_id)


@get("/health", summary="Schema version, table size, LISTEN status")
async def health(dash: Dash) -> dict[str, Any]:
    return await dash.health()


@get("/audit", summary="Recorded changes, newest first: dashboard writes (refused ones too) "
     "and queue changes made through the API or the CLI of any process")
async def audit(dash: Dash, limit: FromQuery[int | None] = None) -> list[dict[str, Any]]:
    return [e.as_dict() for e in await dash.audit.entries(parse_limit(limit, MAX_PAGE))]


@get("/events", summary="Server-sent events: 'change' with the queue counts whenever they change")
async def events(dash: Dash) -> ServerSentEvent:
    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        retry: int | None = 2000  # ms before the browser reconnects a dropped stream
        async for snapshot in dash.hub.changes():
            if snapshot is None:
                yield ServerSentEventMessage(comment="keepalive")
            else:
                yield ServerSentEventMessage(event="change", retry=retry, data=json.dumps(
                    {"version": dash.hub.version, **snapshot}))
                retry = None

    return ServerSentEvent(stream(), headers={"Cache-Control": "no-store",
                                              "X-Accel-Buffering": "no"})


# -- writes ----------------------------------------------------------------------------------------


@post("/jobs/{job_id:str}/retry", status_code=200, opt={"action": "job.retry"}, guards=[write_guard],
      summary="Queue a dead-lettered job again (same id, attempts reset)")
async def retry_job(request: Request[Any, Any, Any], dash: Dash,
                    job_id: FromPath[str]) -> dict[str, Any]:
    ok = await dash.soniq.dead_letter.replay(job_id)
    await _record(request, dash, "job.retry", [job_id], ok)
    return {"retried": ok}


@post("/jobs/{job_id:str}/cancel", status_code=200, opt={"action": "job.cancel"}, guards=[write_guard],
      summary="Cancel a waiting or queued job, or ask a running job's worker to cancel it")
async def cancel_job(request: Request[Any, Any, Any], dash: Dash,
                     job_id: FromPath[str]) -> dict[str, Any]:
    outcome = await dash.soniq.request_cancel(job_id)
    await _record(request, dash, "job.cancel", [job_id], outcome is not None, detail=outcome)
    return {"cancelled": outcome == "cancelled", "cancel_requested": outcome == "requested"}


@delete("/jobs/{job_id:str}", status_code=200, opt={"action": "job.delete"}, guards=[write_guard],
        summary="Delete a job in any state")
async def delete_job(request: Request[Any, Any, Any], dash: Dash,
                     job_id: FromPath[str]) -> dict[str, Any]:
    ok = await dash.soniq.delete_job(job_id)
    await _record(request, dash, "job.delete", [job_id], ok)
    return {"deleted": ok}


@post("/dead-letter/{job_id:str}/replay", status_code=200, opt={"action": "dead_letter.replay"},
      guards=[write_guard], summary="Replay one dead-lettered job")
async def replay_one(request: Request[Any, Any, Any], dash: Dash,
                     job_id: FromPath[str]) -> dict[str, Any]:
    ok = await dash.soniq.dead_letter.replay(job_id)
    await _record(request, dash, "dead_letter.replay", [job_id], ok)
    return {"replayed": int(ok)}


@delete("/dead-letter/{job_id:str}", status_code=200, opt={"action": "dead_letter.delete"},
        guards=[write_guard], summary="Delete one dead-lettered job")
async def delete_one(request: Request[Any, Any, Any], dash: Dash,
                     job_id: FromPath[str]) -> dict[str, Any]:
    ok = await dash.soniq.dead_letter.delete(job_id)
    await _record(request, dash, "dead_letter.delete", [job_id], ok)
    return {"deleted": int(ok)}


@post("/dead-letter/replay", status_code=200, opt={"action": "dead_letter.replay_bulk"}, guards=[write_guard],
      summary="Replay the listed dead-lettered jobs")
async def replay_bulk(request: Request[Any, Any, Any], dash: Dash,
                      data: JSONBody[IdList]) -> dict[str, Any]:
    ids = _ids(data)
    done = [i for i in ids if await dash.soniq.dead_letter.replay(i)]
    await _record(request, dash, "dead_letter.replay_bulk", ids, len(done),
                  detail=f"{len(done)} of {len(ids)} replayed")
    return {"replayed": len(done), "ids": done}


@post("/dead-letter/delete", status_code=200, opt={"action": "dead_letter.delete_bulk"}, guards=[write_guard],
      summary="Delete the listed dead-lettered jobs")
async def delete_bulk(request: Request[Any, Any, Any], dash: Dash,
                      data: JSONBody[IdList]) -> dict[str, Any]:
    ids = _ids(data)
    done = [i for i in ids if await dash.soniq.dead_letter.delete(i)]
    await _record(request, dash, "dead_letter.delete_bulk", ids, len(done),
                  detail=f"{len(done)} of {len(ids)} deleted")
    return {"deleted": len(done), "ids": done}


@post("/dead-letter/replay-matching", status_code=200,
      opt={"action": "dead_letter.replay_matching"}, guards=[write_guard],
      summary="Replay every dead-lettered job matching the filters")
async def replay_matching(request: Request[Any, Any, Any], dash: Dash,
                          data: JSONBody[ReplayMatching]) -> dict[str, Any]:
    queue = data.queue or None
    name = data.name or None
    count = await dash.soniq.dead_letter.replay_many(queue=queue, job_name=name, limit=data.limit)
    await _record(request, dash, "dead_letter.replay_matching",
                  [f"queue={queue or '*'}", f"name={name or '*'}"], count, detail=f"{count} replayed")
    return {"replayed": count}


@post("/workflows/{workflow_id:str}/cancel", status_code=200, opt={"action": "workflow.cancel"},
      guards=[write_guard], summary="Cancel every unfinished step of a workflow or batch "
      "(running steps get a cancel request); the outcome per step name")
async def cancel_workflow(request: Request[Any, Any, Any], dash: Dash,
                          workflow_id: FromPath[str]) -> dict[str, Any]:
    outcomes = await dash.soniq.workflows.cancel(workflow_id)
    await _record(request, dash, "workflow.cancel", [workflow_id], bool(outcomes),
                  detail=None if outcomes is None else f"{len(outcomes)} step(s)")
    if outcomes is None:
        raise NotFoundException(f"no workflow with id {workflow_id!r}")
    return {"id": workflow_id, "steps": outcomes}


async def _pause_schedule(request: Request[Any, Any, Any], dash: Dash, name: str,
                          paused: bool) -> dict[str, Any]:
    method = dash.soniq.scheduler.pause if paused else dash.soniq.scheduler.resume
    ok = await method(name)
    action = "schedule.pause" if paused else "schedule.resume"
    await _record(request, dash, action, [name], ok)
    if not ok:
        raise NotFoundException(f"no schedule named {name!r}")
    return {"name": name, "paused": paused}


@post("/schedules/{name:str}/run", status_code=200, opt={"action": "schedule.run"}, guards=[write_guard],
      summary="Enqueue a schedule's job now (its next fire time stays)")
async def run_schedule(request: Request[Any, Any, Any], dash: Dash,
                       name: FromPath[str]) -> dict[str, Any]:
    job_id = await dash.run_schedule(name)
    await _record(request, dash, "schedule.run", [name], job_id is not None,
                  detail=None if job_id is None else f"job {job_id}")
    if job_id is None:
        raise NotFoundException(f"no schedule named {name!r}")
    return {"name": name, "job_id": job_id}


async def _pause_queue(request: Request[Any, Any, Any], dash: Dash, name: str,
                       paused: bool) -> dict[str, Any]:
    """Pause or resume; the change and its audit row are written together by ``app.queues``."""
    method = dash.soniq.queues.pause if paused else dash.soniq.queues.resume
    actor = str(request.state.get("soniq_actor", "unknown"))
    changed = await method(name, actor=actor, client=client_address(request))
    return {"name": name, "paused": paused, "changed": changed}


def _pause_route(kind: str, verb: Literal["pause", "resume"], summary: str,
                 toggle: Callable[[Request[Any, Any, Any], Dash, str, bool],
                                  Awaitable[dict[str, Any]]]) -> HTTPRouteHandler:
    """``POST /<kind>s/{name}/<verb>``: a write route (guarded, audited as ``<kind>.<verb>``)
    that calls ``toggle(request, dash, name, paused)``."""
    paused = verb == "pause"

    async def handler(request: Request[Any, Any, Any], dash: Dash,
                      name: FromPath[str]) -> dict[str, Any]:
        return await toggle(request, dash, name, paused)

    handler.__name__ = handler.__qualname__ = f"{verb}_{kind}"  # the OpenAPI operationId
    return post(f"/{kind}s/{{name:str}}/{verb}", status_code=200, opt={"action": f"{kind}.{verb}"},
                guards=[write_guard], summary=summary)(handler)


_PAUSE_ROUTES = [
    _pause_route("schedule", "pause", "Stop firing a schedule", _pause_schedule),
    _pause_route("schedule", "resume", "Fire a paused schedule again", _pause_schedule),
    _pause_route("queue", "pause", "Stop every worker from claiming jobs of a queue", _pause_queue),
    _pause_route("queue", "resume", "Let workers claim from a paused queue again", _pause_queue),
]

api_router = Router(path="/api", route_handlers=[
    overview, queues, queue_settings, list_jobs, job_detail, job_args, job_result, dead_letter,
    workers, job_names, schedules, webhooks, list_workflows, workflow_detail, health,
    audit, events, retry_job, cancel_job, delete_job, replay_one, delete_one, replay_bulk,
    delete_bulk, replay_matching, run_schedule, cancel_workflow, *_PAUSE_ROUTES,
], tags=["soniq"])
