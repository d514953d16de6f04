"""Recurring jobs: ``@app.periodic`` in code, ``app.scheduler`` at run time.

Every worker runs the scheduler; a database constraint makes each fire time enqueue exactly once,
however many workers there are. Run it with ``python examples/cron_jobs.py`` (SQLite file
``cron_example.db``); it runs a worker until the every-second schedule has fired twice.
"""

from __future__ import annotations

import os

import anyio

from soniq import Soniq

app = Soniq(database_url=os.environ.get("SONIQ_DATABASE_URL", "cron_example.db"),
            scheduler_interval=0.2)


@app.periodic(cron="0 7 * * mon-fri", name="reports.daily", timezone="Europe/Berlin")
async def daily_report() -> str:
    return "report sent"


@app.job(name="heartbeat.ping")
async def ping(source: str) -> str:
    return f"pong from {source}"


async def pings_done() -> int:
    return sum(job["job_name"] == "heartbeat.ping" for job in await app.list_jobs(status="done"))


async def main() -> None:
    async with app:
        await app.scheduler.sync()  # writes @app.periodic schedules (a worker does this too)
        await app.scheduler.add("heartbeat.ping", every=1, args={"source": "scheduler"})
        async with app.running_worker():
            with anyio.fail_after(10):
                while await pings_done() < 2:
                    await anyio.sleep(0.1)
        for schedule in await app.scheduler.list():
            print(schedule["name"], schedule["cron"] or f"every {schedule['every']}s",
                  "paused" if schedule["paused"] else "active")
        print("pings done:", await pings_done() >= 2)


if __name__ == "__main__":
    anyio.run(main)
