"""The systems measured: Soniq (PostgreSQL and SQLite), a bare-asyncpg baseline, and two peers.

Every system answers the same small surface (:class:`System`): install its schema, produce
jobs, run a worker that counts for the worker subprocess, and say how a :class:`Probe` reads its
tables. Each job is ``noop(i)`` (does nothing) or ``stamp(i)`` (records ``time.time()`` the moment
it starts, for latency). Peers are imported lazily, so a missing one only removes its columns.
``soniq+webhooks``, ``soniq+logs`` and ``soniq+encrypt`` are Soniq with one optional feature on
(parameterised instances of the same class); a system may also offer ``surroundings(target)``,
see :func:`surroundings`.
"""

from __future__ import annotations

import importlib
import importlib.util
from contextlib import nullcontext
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from anyio.abc import TaskStatus

    from benchmarks.databases import ProbeSql, Target

__all__ = ["FEATURES", "LIMITED", "PEERS", "Producer", "System", "WorkerHandle", "load_system",
           "missing_reason", "surroundings"]

#: name -> (module, the module's attribute holding the system, the distribution it needs)
_SYSTEMS = {
    "soniq": ("benchmarks.systems.soniq_system", "SYSTEM", "soniq"),
    "asyncpg": ("benchmarks.systems.baseline", "SYSTEM", "asyncpg"),
    # The wake-up floor of the latency group (INSERT + pg_notify, LISTEN + claim).
    "asyncpg+notify": ("benchmarks.systems.baseline", "WAKE", "asyncpg"),
    "pgqueuer": ("benchmarks.systems.pgqueuer_system", "SYSTEM", "pgqueuer"),
    "procrastinate": ("benchmarks.systems.procrastinate_system", "SYSTEM", "procrastinate"),
    # Soniq with one optional feature on (the ``features`` group): instances of the same class.
    "soniq+webhooks": ("benchmarks.systems.soniq_system", "WEBHOOKS", "soniq"),
    "soniq+logs": ("benchmarks.systems.soniq_system", "LOGS", "soniq"),
    "soniq+encrypt": ("benchmarks.systems.soniq_system", "ENCRYPT", "soniq"),
    # Soniq with concurrency_limit=1 per key (the ``limits`` group).
    "soniq+limit-rr": ("benchmarks.systems.soniq_system", "LIMITED_ROUND_ROBIN", "soniq"),
    "soniq+limit-grouped": ("benchmarks.systems.soniq_system", "LIMITED_GROUPED", "soniq"),
    # Plain Soniq beside a paused, limited queue's backlog; and under a queue rate limit.
    "soniq+held-neighbour": ("benchmarks.systems.soniq_system", "NEIGHBOUR_HELD", "soniq"),
    "soniq+queue-rate": ("benchmarks.systems.soniq_system", "QUEUE_RATE", "soniq"),
}
PEERS = ("pgqueuer", "procrastinate")
FEATURES = ("soniq+webhooks", "soniq+logs", "soniq+encrypt")
#: The ``limits`` group's systems: keys taken round-robin, or grouped.
LIMITED = ("soniq+limit-rr", "soniq+limit-grouped")


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
    _module, _attribute, distribution = _SYSTEMS[name]
    if importlib.util.find_spec(distribution) is None:
        return f"{distribution} is not installed in this environment (nox -s bench installs it)"
    return None


def load_system(name: str) -> System:
    module_name, attribute, _distribution = _SYSTEMS[name]
    system: System = getattr(importlib.import_module(module_name), attribute)
    return system


def surroundings(system: System, target: Target) -> AbstractAsyncContextManager[object]:
    """What a step of ``system`` needs around it (entered after ``install``, left after the
    worker stopped): the system's optional ``surroundings(target)`` -- ``soniq+webhooks`` runs
    its silent receiver there -- or nothing."""
    around = getattr(system, "surroundings", None)
    return around(target) if around is not None else nullcontext()
