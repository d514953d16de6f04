"""Litestar + Soniq: ``SoniqPlugin`` opens Soniq, injects it, runs a worker and mounts the dashboard.

Run it with ``litestar --app-dir examples --app litestar_app:api run`` or ``uvicorn
litestar_app:api --app-dir examples`` (SQLite file ``litestar_example.db`` in the current
directory, or ``SONIQ_DATABASE_URL=postgresql://...`` after ``soniq setup``), then::

    curl -X POST localhost:8000/orders/42
    curl localhost:8000/jobs/<job_id>
    open http://localhost:8000/dashboard/        # the Soniq dashboard, mounted by the plugin
"""

from __future__ import annotations

import os
from typing import Any

from litestar import Litestar, get, post
from litestar.di import NamedDependency  # noqa: TC002 -- Litestar reads annotations at run time
from litestar.exceptions import NotFoundException
from litestar.params import FromPath  # noqa: TC002

from soniq import Soniq
from soniq.contrib.litestar import SoniqPlugin

jobs = Soniq(database_url=os.environ.get("SONIQ_DATABASE_URL", "litestar_example.db"))


@jobs.job(queue="orders")
def ship_order(order_id: int) -> dict[str, Any]:
    """A plain function: the worker runs it in a thread."""
    return {"order_id": order_id, "shipped": True}


@post("/orders/{order_id:int}", status_code=202)
async def create_order(order_id: FromPath[int], soniq: NamedDependency[Soniq]) -> dict[str, str]:
    return {"job_id": await soniq.enqueue(ship_order, order_id=order_id)}


@get("/jobs/{job_id:str}")
async def job_status(job_id: FromPath[str], soniq: NamedDependency[Soniq]) -> dict[str, Any]:
    job = await soniq.get_job(job_id)
    if job is None:
        raise NotFoundException("no such job")
    return {"id": job["id"], "status": job["status"], "result": job["result"]}


api = Litestar(
    [create_order, job_status],
    plugins=[SoniqPlugin(jobs, run_worker=True, dashboard_path="/dashboard")],
)
