"""The dashboard's HTML pages, rendered on the server from the same service calls as the API.

Templates autoescape everything (there is no ``|safe`` anywhere), charts are SVG drawn from
numbers computed here, and the pages run no inline script: one stylesheet, one script, both from
``/static``. Writes go through the JSON API (the script sends them), never through these routes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader
from litestar import Request, Router, get
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from soniq.dashboard.graph import layout
from soniq.dashboard.service import STATUSES, Dash, JobFilter
from soniq.features.workflows import WORKFLOW_STATUSES

__all__ = ["page_router", "template_environment"]

NAV = (("overview", "/", "Overview"), ("queues", "/queues", "Queues"),
       ("jobs", "/jobs", "Jobs"), ("dead_letter", "/dead-letter", "Dead letter"), ("workflows", "/workflows", "Workflows"),
       ("workers", "/workers", "Workers"),
       ("schedules", "/schedules", "Schedules"), ("webhooks", "/webhooks", "Webhooks"),
       ("health", "/health", "Health"))


def _timestamp(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S") + "Z"
    return "" if value is None else str(value)


def _seconds(value: Any) -> str:
    if value is None:
        return ""
    value = float(value)
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _size(value: Any) -> str:
    if value is None:
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def template_environment() -> Environment:
    """The Jinja environment of the packaged templates; autoescape is always on."""
    env = Environment(loader=PackageLoader("soniq.dashboard", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ts=_timestamp, seconds=_seconds, size=_size)
    return env


def _chart(series: list[dict[str, Any]], label: str, *, fmt: str) -> dict[str, Any]:
    """Bars in a 0..100 SVG box: done stacked under failed (dead-lettered)."""
    peak = max((b["done"] + b["failed"] for b in series), default=0) or 1
    width = 100 / max(len(series), 1)
    bars = []
    for index, b in enumerate(series):
        done_h = b["done"] / peak * 90
        failed_h = b["failed"] / peak * 90
        bars.append({"x": round(index * width, 3), "w": round(width * 0.8, 3),
                     "done_y": round(100 - done_h, 3), "done_h": round(done_h, 3),
                     "failed_y": round(100 - done_h - failed_h, 3), "failed_h": round(failed_h, 3),
                     "title": f"{b['at'].strftime(fmt)}: {b['done']} done, {b['failed']} failed"})
    return {"label": label, "bars": bars, "peak": peak,
            "done": sum(b["done"] for b in series), "failed": sum(b["failed"] for b in series)}


def _page(request: Request[Any, Any, Any], dash: Dash, name: str, page: str,
          **context: Any) -> Template:
    root = request.app.state["soniq_root"] or request.scope.get("root_path", "") or ""
    return Template(template_name=name, context={
        "root": root.rstrip("/"), "page": page, "nav": NAV, "statuses": STATUSES,
        "has_key": dash.access.has_key, **context,
    }, headers={"Cache-Control": "no-store"})


@get("/", name="overview")
async def overview_page(request: Request[Any, Any, Any], dash: Dash) -> Template:
    data = await dash.overview()
    charts = [_chart(data["charts"]["hour"], "Last hour (per minute)", fmt="%H:%M"),
              _chart(data["charts"]["day"], "Last day (per hour)", fmt="%m-%d %H:00")]
    return _page(request, dash, "overview.html", "overview", data=data, charts=charts)


@get("/jobs", name="jobs")
async def jobs_page(request: Request[Any, Any, Any], dash: Dash,
                    queue: FromQuery[str | None] = None, status: FromQuery[str | None] = None,
                    name: FromQuery[str | None] = None, since: FromQuery[str | None] = None, until: FromQuery[str | None] = None,
                    before: FromQuery[str | None] = None, limit: FromQuery[int | None] = None) -> Template:
    flt = JobFilter.parse(queue=queue, status=status, name=name, since=since, until=until,
                          before=before, limit=limit)
    data = await dash.jobs(flt)
    next_query = flt.query(before=data["next_cursor"]) if data["next_cursor"] else None
    first_query = flt.query(before=None) if flt.before else None
    queues = [q["queue"] for q in (await dash.hub.counts())["queues"]]
    return _page(request, dash, "jobs.html", "jobs", data=data, flt=flt, queues=queues,
                 next_query=next_query, first_query=first_query)


@get("/queues", name="queues")
async def queues_page(request: Request[Any, Any, Any], dash: Dash) -> Template:
    return _page(request, dash, "queues.html", "queues", queues=await dash.queues(),
                 audit=[e for e in await dash.audit.entries(200)
                        if e.action.startswith("queue.")][:20])


@get("/jobs/{job_id:str}", name="job")
async def job_page(request: Request[Any, Any, Any], dash: Dash,
                   job_id: FromPath[str]) -> Template:
    data = await dash.job(job_id)
    return _page(request, dash, "job.html", "jobs", **data)


@get("/dead-letter", name="dead_letter")
async def dead_letter_page(request: Request[Any, Any, Any], dash: Dash,
                           queue: FromQuery[str | None] = None, name: FromQuery[str | None] = None,
                           limit: FromQuery[int | None] = None, offset: FromQuery[int | None] = None) -> Template:
    data = await dash.dead_letter(queue=queue, name=name, limit=limit, offset=offset)
    return _page(request, dash, "dead_letter.html", "dead_letter", data=data)


@get("/workflows", name="workflows")
async def workflows_page(request: Request[Any, Any, Any], dash: Dash,
                         status: FromQuery[str | None] = None, before: FromQuery[str | None] = None,
                         limit: FromQuery[int | None] = None) -> Template:
    data = await dash.workflows(status=status, before=before, limit=limit)
    return _page(request, dash, "workflows.html", "workflows", data=data,
                 workflow_statuses=WORKFLOW_STATUSES)


@get("/workflows/{workflow_id:str}", name="workflow")
async def workflow_page(request: Request[Any, Any, Any], dash: Dash,
                        workflow_id: FromPath[str]) -> Template:
    data = await dash.workflow(workflow_id)
    return _page(request, dash, "workflow.html", "workflows", graph=layout(
        data["workflow"]["steps"]), **data)


@get("/workers", name="workers")
async def workers_page(request: Request[Any, Any, Any], dash: Dash) -> Template:
    return _page(request, dash, "workers.html", "workers", workers=await dash.workers(),
                 job_names=await dash.job_names())


@get("/schedules", name="schedules")
async def schedules_page(request: Request[Any, Any, Any], dash: Dash) -> Template:
    return _page(request, dash, "schedules.html", "schedules", schedules=await dash.schedules())


@get("/webhooks", name="webhooks")
async def webhooks_page(request: Request[Any, Any, Any], dash: Dash,
                        endpoint: FromQuery[str | None] = None, status: FromQuery[str | None] = None) -> Template:
    data = await dash.webhooks(endpoint=endpoint, status=status, limit=None)
    return _page(request, dash, "webhooks.html", "webhooks", data=data)


@get("/health", name="health")
async def health_page(request: Request[Any, Any, Any], dash: Dash) -> Template:
    return _page(request, dash, "health.html", "health", health=await dash.health(),
                 audit=await dash.audit.entries(50))


page_router = Router(path="/", route_handlers=[
    overview_page, queues_page, jobs_page, job_page, dead_letter_page, workflows_page,
    workflow_page, workers_page, schedules_page,
    webhooks_page, health_page,
], include_in_schema=False)
