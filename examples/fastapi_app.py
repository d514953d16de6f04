"""FastAPI + Soniq: ``POST /signup`` enqueues a job; a worker in the app's lifespan runs it.

Run it with ``uvicorn fastapi_app:api --app-dir examples`` (SQLite file ``fastapi_example.db`` in
the current directory; set ``SONIQ_DATABASE_URL=postgresql://...`` after ``soniq setup`` to use
PostgreSQL), then::

    curl -X POST 'localhost:8000/signup?email=ada@example.com'
    curl localhost:8000/jobs/<job_id>

Starlette works the same way: ``Starlette(routes=..., lifespan=lifespan(jobs, worker=True))``.
For larger deployments drop ``worker=True`` and run ``soniq worker fastapi_app:jobs`` instead.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException

from soniq import JobContext, Soniq
from soniq.contrib.fastapi import get_soniq, lifespan

jobs = Soniq(database_url=os.environ.get("SONIQ_DATABASE_URL", "fastapi_example.db"))
SoniqDep = Annotated[Soniq, Depends(get_soniq)]


@jobs.job(queue="emails", retries=3)
async def send_welcome(email: str, ctx: JobContext) -> str:
    ctx.logger.info("sending the welcome email to %s", email)
    return f"welcome sent to {email}"


api = FastAPI(lifespan=lifespan(jobs, worker=True))


@api.post("/signup", status_code=202)
async def signup(email: str, soniq: SoniqDep) -> dict[str, str]:
    job_id = await soniq.enqueue(send_welcome, email=email)
    return {"job_id": job_id}


@api.get("/jobs/{job_id}")
async def job_status(job_id: str, soniq: SoniqDep) -> dict[str, Any]:
    job = await soniq.get_job(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail="no such job")
    return {"id": job["id"], "status": job["status"], "result": job["result"],
            "attempts": job["attempts"]}
