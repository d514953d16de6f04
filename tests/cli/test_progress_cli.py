"""``soniq inspect`` and ``soniq jobs show`` print a job's progress (a real subprocess on SQLite
and PostgreSQL)."""

from __future__ import annotations

import re

from soniq import JobContext, Soniq
from tests.cli.cli import in_db
from tests.cli.conftest import Commands, InProcess


def test_inspect_shows_the_progress(url: str, cli: InProcess, commands: Commands) -> None:
    async def make(app: Soniq) -> str:
        async def step(ctx: JobContext) -> None:
            await ctx.progress({"done": 3, "of": 10})

        app.job(name="cli.step")(step)
        job_id = await app.enqueue("cli.step")
        await app.run_worker(run_once=True)
        return job_id

    job_id = in_db(url, make)
    line = re.search(r"^progress +(.*)$", commands.ok("inspect", job_id), re.M)
    assert line is not None and '"done": 3' in line[1] and '"of": 10' in line[1]
    assert cli.json("inspect", job_id, SONIQ_DATABASE_URL=url)["progress"] == {"done": 3, "of": 10}
