"""Sync code enqueues with ``app.sync``: Flask or Django views, scripts, plain threads.

``app.sync`` has the same methods as the async API (``enqueue``, ``enqueue_many``, ``schedule``,
``get_job``, ``get_result``, ``cancel_job``, ...), blocking. All calls share one private event
loop and connection pool, so they are safe from any number of threads. A Flask view is simply::

    @flask_app.post("/thumbnails")
    def make_thumbnail():
        return {"job_id": app.sync.enqueue(thumbnail, path=request.json["path"])}

Run this script with ``python examples/sync_callers.py``; in production the jobs run in
``soniq worker sync_callers:app`` instead of the ``run_once`` worker at the end.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import anyio

from soniq import Soniq

app = Soniq(database_url=os.environ.get("SONIQ_DATABASE_URL", "sync_example.db"))


@app.job(queue="images")
def thumbnail(path: str, size: int = 64) -> str:
    return f"{path.rsplit('.', 1)[0]}_{size}px.png"


def handle_upload(path: str) -> str:
    """What a sync view does: enqueue and answer at once with the job id."""
    return app.sync.enqueue(thumbnail, path=path)


def main() -> None:
    paths = [f"photo{n}.jpg" for n in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # eight requests on four threads
        ids = list(pool.map(handle_upload, paths))
    print(f"enqueued {len(ids)} jobs; {app.sync.get_queue_stats()[0]['queued']} waiting")

    async def work() -> None:
        async with app:  # closes the app, and app.sync with it, at the end
            await app.run_worker(run_once=True)
            for job_id in ids[:3]:
                print(await app.get_result(job_id))

    anyio.run(work)


if __name__ == "__main__":
    main()
