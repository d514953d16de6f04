"""The systems measured: Soniq (PostgreSQL and SQLite), a bare-asyncpg baseline, and two peers.

Every system answers the same small surface (:class:`System`): install its schema, produce
jobs, run a worker that counts for the worker subprocess, and say how a :class:`Probe` reads its
tables. Each job is ``noop(i)`` (does nothing) or ``stamp(i)`` (records ``time.time()`` the moment
it starts, for latency). Peers are imported lazily, so a missing one only removes its columns.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from benchmarks.databases import ProbeSql, Target

__all__ = ["PEERS", "Producer", "System", "WorkerHandle", "load_system", "missing_reason"]

#: name -> (module, the distribution it needs)
_SYSTEMS = {
    "soniq": ("benchmarks.systems.soniq_system", "soniq"),
    "asyncpg": ("benchmarks.systems.baseline", "asyncpg"),
    "pgqueuer": ("benchmarks.systems.pgqueuer_system", "pgqueuer"),
    "procrastinate": ("benchmarks.systems.procrastinate_system", "procrastinate"),
}
PEERS = ("pgqueuer", "procrastinate")


class Producer(Protocol):
    async def enqueue_one(self, i: int, job: str = "noop") -> None: ...
    async def enqueue_bulk(self, first: int, count: int) -> None: ...
    async def aclose(self) -> None: ...


class WorkerHandle(Protocol):
    """A worker inside the worker subprocess: ``run`` until ``stop`` (graceful)."""

    async def run(self, *, task_status: TaskStatus[None]) -> None: ...
    def stop(self) -> None: ...
    async def aclose(self) -> None: ...


class System(Protocol):
    name: str

    def version(self) -> str: ...
    def probe_sql(self, target: Target) -> ProbeSql: ...
    async def install(self, target: Target) -> None: ...
    async def open_producer(self, target: Target) -> Producer: ...
    async def open_worker(self, target: Target, concurrency: int,
                          stamps: dict[int, float]) -> WorkerHandle: ...


def missing_reason(name: str) -> str | None:
    """Why ``name`` cannot be measured here (not installed), or None."""
    _module, distribution = _SYSTEMS[name]
    if importlib.util.find_spec(distribution) is None:
        return f"{distribution} is not installed in this environment (nox -s bench installs it)"
    return None


def load_system(name: str) -> System:
    module: Any = importlib.import_module(_SYSTEMS[name][0])
    system: System = module.SYSTEM
    return system
