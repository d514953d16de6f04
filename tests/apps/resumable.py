"""A job for the checkpoint tests in a real ``soniq worker`` subprocess (database from
SONIQ_DATABASE_URL): its first attempt checkpoints, reports progress 50 (so a test knows the
checkpoint is durable) and then hangs until its worker is killed; a later attempt returns what it
found."""

from __future__ import annotations

from typing import Any

import anyio

from soniq import JobContext, Soniq

app = Soniq()


@app.job(name="resumable.crawl", retries=3)
async def crawl(ctx: JobContext) -> Any:
    if ctx.checkpoint_state is None:
        await ctx.checkpoint({"next_page": 3, "seen": ["a", "b", "c"]})
        await ctx.progress(50)
        await anyio.sleep_forever()
    return {"resumed_from": ctx.checkpoint_state, "attempt": ctx.attempt}
