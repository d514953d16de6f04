"""Procrastinate (psycopg 3) through its documented API, as perf-anchors.md Part 2 drove it:
``run_worker_async(concurrency=N)``, stopped by cancelling it (its documented graceful stop)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import procrastinate
from procrastinate import App, PsycopgConnector

from benchmarks.databases import ProbeSql

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from benchmarks.databases import Target

__all__ = ["SYSTEM"]

_PROBE = ProbeSql(
    remaining="SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))",
    last_done="SELECT extract(epoch FROM max(at))::float8 FROM procrastinate_events "
              "WHERE type = 'succeeded'",
    done="SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
    queued="SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'",
)


def _make_app(url: str, stamps: dict[int, float] | None = None) -> App:
    app = App(connector=PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(i: int) -> None:
        return None

    @app.task(name="stamp")
    async def stamp(i: int) -> None:
        if stamps is not None:
            stamps[i] = time.time()

    return app


class _Producer:
    def __init__(self, app: App) -> None:
        self._app = app
        self._tasks = {name: app.tasks[name] for name in ("noop", "stamp")}

    async def enqueue_one(self, i: int, job: str = "noop") -> None:
        await self._tasks[job].defer_async(i=i)

    async def enqueue_bulk(self, first: int, count: int) -> None:
        jobs: list[dict[str, Any]] = [{"i": i} for i in range(first, first + count)]
        await self._tasks["noop"].batch_defer_async(*jobs)

    async def aclose(self) -> None:
        await self._app.close_async()


class _Worker:
    def __init__(self, app: App, concurrency: int) -> None:
        self._app = app
        self._concurrency = concurrency
        self._scope = anyio.CancelScope()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        with self._scope:
            await self._app.run_worker_async(concurrency=self._concurrency,
                                             install_signal_handlers=False)

    def stop(self) -> None:
        self._scope.cancel()

    async def aclose(self) -> None:
        await self._app.close_async()


class ProcrastinateSystem:
    name = "procrastinate"

    def version(self) -> str:
        return str(procrastinate.__version__)

    def probe_sql(self, target: Target) -> ProbeSql:
        return _PROBE

    async def install(self, target: Target) -> None:
        app = _make_app(target.url)
        await app.open_async()
        try:
            await app.schema_manager.apply_schema_async()
        finally:
            await app.close_async()

    async def open_producer(self, target: Target) -> _Producer:
        app = _make_app(target.url)
        await app.open_async()
        return _Producer(app)

    async def open_worker(self, target: Target, concurrency: int,
                          stamps: dict[int, float]) -> _Worker:
        app = _make_app(target.url, stamps)
        await app.open_async()
        return _Worker(app, concurrency)


SYSTEM: Any = ProcrastinateSystem()
