"""Soniq inside a trio application: the worker is one more task in your nursery.

Run it with ``python examples/trio_app.py`` (SQLite file ``trio_example.db``; set
``SONIQ_DATABASE_URL=postgresql://...`` after ``soniq setup`` for PostgreSQL, which runs its
asyncio driver on a private loop behind the scenes).
"""

from __future__ import annotations

import os

import trio

from soniq import Soniq
from soniq.testing import wait_for_status

app = Soniq(database_url=os.environ.get("SONIQ_DATABASE_URL", "trio_example.db"))


@app.job()
async def crunch(n: int) -> int:
    await trio.sleep(0.01)  # job code is ordinary trio code
    return n * n


async def main() -> None:
    async with app:
        # Pattern 1: the worker as a task of your own nursery (task_status says when it claims).
        async with trio.open_nursery() as nursery:
            worker = app.worker(concurrency=4)
            await nursery.start(worker.run)
            ids = [await app.enqueue(crunch, n=n) for n in range(5)]
            for job_id in ids:
                await wait_for_status(app, job_id, "done")
            worker.stop()  # stop claiming; running jobs finish, then run() returns
        print("nursery:", [await app.get_result(job_id) for job_id in ids])

        # Pattern 2: ``async with`` -- a worker runs for the body of the block.
        async with app.running_worker(concurrency=2):
            job_id = await app.enqueue(crunch, n=12)
            await wait_for_status(app, job_id, "done")
        print("async with:", await app.get_result(job_id))


if __name__ == "__main__":
    trio.run(main)
