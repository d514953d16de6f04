"""PgQueuer (asyncpg driver) through its documented API, as perf-anchors.md Part 2 drove it.

Concurrency N maps to ``qm.run(batch_size=min(10, N // 2), max_concurrent_tasks=N)``: PgQueuer
refuses a cap below twice the batch size, so a cap of 10 means batches of 5; at a cap of 100 its
default batch of 10 is kept. ``open_worker(..., batch_size=B)`` asks for batches of B instead
(the ``embedded`` group: 10, its fastest setting here), the cap then being at least 2 × B.
Finished jobs leave ``pgqueuer`` for ``pgqueuer_log``.
"""

from __future__ import annotations

import importlib.metadata
import time
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
from pgqueuer import Job, QueueManager
from pgqueuer.queries import Queries

from benchmarks.databases import ProbeSql

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from benchmarks.databases import Target

__all__ = ["SYSTEM"]

_PROBE = ProbeSql(
    remaining="SELECT EXISTS (SELECT 1 FROM pgqueuer)",
    last_done="SELECT extract(epoch FROM max(created))::float8 FROM pgqueuer_log "
              "WHERE status = 'successful'",
    done="SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
    queued="SELECT count(*) FROM pgqueuer WHERE status = 'queued'",
)


class _Producer:
    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._queries = Queries.from_asyncpg_connection(conn)

    async def enqueue_one(self, i: int, job: str = "noop") -> None:
        await self._queries.enqueue(job, str(i).encode())

    async def enqueue_bulk(self, first: int, count: int) -> None:
        numbers = range(first, first + count)
        await self._queries.enqueue(["noop"] * count, [str(i).encode() for i in numbers],
                                    [0] * count)

    async def aclose(self) -> None:
        await self._conn.close()


class _Worker:
    def __init__(self, conn: Any, concurrency: int, stamps: dict[int, float],
                 batch_size: int | None = None) -> None:
        self._conn = conn
        self._concurrency = concurrency
        self._batch = batch_size or max(1, min(10, concurrency // 2))
        self._qm = QueueManager(Queries.from_asyncpg_connection(conn))

        @self._qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        @self._qm.entrypoint("stamp")
        async def stamp(job: Job) -> None:
            stamps[int(job.payload or b"0")] = time.time()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._qm.run(batch_size=self._batch,
                           max_concurrent_tasks=max(self._concurrency, 2 * self._batch))

    def stop(self) -> None:
        self._qm.shutdown.set()

    async def aclose(self) -> None:
        await self._conn.close()


class PgQueuerSystem:
    name = "pgqueuer"

    def version(self) -> str:
        return importlib.metadata.version("pgqueuer")

    def probe_sql(self, target: Target) -> ProbeSql:
        return _PROBE

    async def install(self, target: Target) -> None:
        conn = await asyncpg.connect(target.url)
        try:
            await Queries.from_asyncpg_connection(conn).install()
        finally:
            await conn.close()

    async def open_producer(self, target: Target) -> _Producer:
        return _Producer(await asyncpg.connect(target.url))

    async def open_worker(self, target: Target, concurrency: int,
                          stamps: dict[int, float], batch_size: int | None = None) -> _Worker:
        return _Worker(await asyncpg.connect(target.url), concurrency, stamps, batch_size)


SYSTEM: Any = PgQueuerSystem()
