"""Soniq in one file: define jobs, enqueue them, run a worker — on SQLite, with no setup step.

Run it with ``python examples/quickstart.py``. Swap the URL for ``postgresql://...`` (after
``soniq setup``) and nothing else changes.
"""

from __future__ import annotations

import anyio

from soniq import JobContext, Soniq

app = Soniq(database_url="quickstart.db")


@app.job(queue="emails", retries=3, retry_delay=0.1)
async def send_welcome(email: str, ctx: JobContext) -> str:
    if email.endswith("@flaky.example") and ctx.attempt == 1:
        raise ConnectionError("mail server hiccup")  # retried, then succeeds
    return f"welcome sent to {email}"


@app.job()
def resize_avatar(user_id: int, size: int = 128) -> dict[str, int]:
    """Plain functions run in a worker thread."""
    return {"user_id": user_id, "size": size}


async def main() -> None:
    async with app:
        ids = [
            await app.enqueue(send_welcome, email="ada@example.com"),
            await app.enqueue(send_welcome, email="bob@flaky.example"),
            await app.enqueue(resize_avatar, user_id=7),
        ]
        async with anyio.create_task_group() as tg:
            worker = app.worker(concurrency=4)
            await tg.start(worker.run)
            for job_id in ids:
                with anyio.fail_after(10):
                    while (await app.get_job(job_id) or {}).get("status") != "done":
                        await anyio.sleep(0.05)
            worker.stop()
        for job_id in ids:
            job = await app.get_job(job_id)
            assert job is not None
            print(f"{job['job_name']:<28} {job['status']:<5} attempts={job['attempts']} "
                  f"result={await app.get_result(job_id)!r}")
        for queue in await app.get_queue_stats():
            print(queue)


if __name__ == "__main__":
    anyio.run(main)
