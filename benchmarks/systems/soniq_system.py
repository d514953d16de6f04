"""Soniq through its public API only, on PostgreSQL or SQLite (with default settings)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio

import soniq
from benchmarks.databases import ProbeSql
from soniq import Soniq

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from benchmarks.databases import Target

__all__ = ["SYSTEM", "make_app"]

_PG_PROBE = ProbeSql(
    remaining="SELECT EXISTS (SELECT 1 FROM soniq_jobs WHERE status = 'queued') "
              "OR EXISTS (SELECT 1 FROM soniq_jobs WHERE status = 'processing')",
    last_done="SELECT extract(epoch FROM max(finished_at))::float8 FROM soniq_jobs "
              "WHERE status = 'done'",
    done="SELECT count(*) FROM soniq_jobs WHERE status = 'done'",
    queued="SELECT count(*) FROM soniq_jobs WHERE status = 'queued'",
    done_before="SELECT count(*) FROM soniq_jobs WHERE status = 'done' "
                "AND finished_at <= to_timestamp($1)",
)
_SQLITE_PROBE = ProbeSql(
    remaining="SELECT EXISTS (SELECT 1 FROM soniq_jobs WHERE status IN ('queued', 'processing'))",
    last_done="SELECT max(finished_at) FROM soniq_jobs WHERE status = 'done'",
    done="SELECT count(*) FROM soniq_jobs WHERE status = 'done'",
    queued="SELECT count(*) FROM soniq_jobs WHERE status = 'queued'",
)


def make_app(url: str, stamps: dict[int, float] | None = None) -> Soniq:
    """The benchmark app: ``noop(i)`` and ``stamp(i)``, registered as they would be by a user."""
    app = Soniq(database_url=url)

    @app.job(name="noop")
    async def noop(i: int) -> None:
        return None

    @app.job(name="stamp")
    async def stamp(i: int) -> None:
        if stamps is not None:
            stamps[i] = time.time()

    return app


class _Producer:
    def __init__(self, app: Soniq) -> None:
        self._app = app
        # Enqueue by function, as the README does (a job name would work too).
        self._functions = {spec.name: spec.func for spec in app.registry}

    async def enqueue_one(self, i: int, job: str = "noop") -> None:
        await self._app.enqueue(self._functions[job], i=i)

    async def enqueue_bulk(self, first: int, count: int) -> None:
        await self._app.enqueue_many(self._functions["noop"],
                                     [{"i": i} for i in range(first, first + count)])

    async def aclose(self) -> None:
        await self._app.close()


class _Worker:
    def __init__(self, app: Soniq, concurrency: int) -> None:
        self._app = app
        self._worker = app.worker(concurrency=concurrency)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self._worker.run)
            task_status.started()

    def stop(self) -> None:
        self._worker.stop()

    async def aclose(self) -> None:
        await self._app.close()


class SoniqSystem:
    name = "soniq"

    def version(self) -> str:
        return str(soniq.__version__)

    def probe_sql(self, target: Target) -> ProbeSql:
        return _PG_PROBE if target.kind == "postgres" else _SQLITE_PROBE

    async def install(self, target: Target) -> None:
        app = make_app(target.url)
        try:
            await app.setup()
        finally:
            await app.close()

    async def open_producer(self, target: Target) -> _Producer:
        app = make_app(target.url)
        await app.ensure_initialized()
        return _Producer(app)

    async def open_worker(self, target: Target, concurrency: int,
                          stamps: dict[int, float]) -> _Worker:
        app = make_app(target.url, stamps)
        await app.ensure_initialized()
        return _Worker(app, concurrency)


SYSTEM: Any = SoniqSystem()
