"""The README's quickstart, verbatim below this docstring (a test keeps the two identical)."""

from __future__ import annotations

import anyio

from soniq import JobContext, Soniq

app = Soniq(database_url="quickstart.db")   # or "postgresql://user@host/db" after `soniq setup`


@app.job(queue="emails", retries=3, retry_delay=0.1)
async def send_welcome(email: str, ctx: JobContext) -> str:
    return f"welcome sent to {email} (attempt {ctx.attempt})"


async def main() -> None:
    async with app:
        job_id = await app.enqueue(send_welcome, email="ada@example.com")
        await app.run_worker(run_once=True)          # or: soniq worker myapp:app
        print(await app.get_result(job_id))


anyio.run(main)
