"""A durable function for the SIGKILL tests in a real ``soniq worker`` subprocess (database from
SONIQ_DATABASE_URL). Each step run appends its key to the ledger file ``DURABLE_LEDGER``; with
``DURABLE_HANG=between`` the first attempt hangs after step ``first`` (between two steps), with
``DURABLE_HANG=middle`` inside step ``second`` -- in both cases after writing ``hung`` to the
ledger, so the test knows when to kill the worker. Later attempts go through."""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from soniq import DurableContext, Soniq

app = Soniq()


def _ledger(line: str) -> None:
    with Path(os.environ["DURABLE_LEDGER"]).open("a") as ledger:
        ledger.write(f"{line}\n")


def _hung() -> bool:
    return "hung" in Path(os.environ["DURABLE_LEDGER"]).read_text().split()


async def _hang_once(where: str) -> None:
    if os.environ.get("DURABLE_HANG") == where and not _hung():
        _ledger("hung")
        await anyio.sleep_forever()


async def first(n: int) -> int:
    _ledger("first")
    return n + 1


async def second(n: int) -> int:
    _ledger("second")
    await _hang_once("middle")
    return n * 10


def third(n: int) -> int:
    _ledger("third")
    return n + 5


@app.durable(name="durable.pipeline", retries=5, retry_delay=0)
async def pipeline(ctx: DurableContext, n: int) -> list[int]:
    a = await ctx.step(first, n)
    await _hang_once("between")
    b = await ctx.step(second, a)
    c = await ctx.step(third, b)
    return [a, b, c]
