"""Soniq through its public API only, on PostgreSQL or SQLite (with default settings), and the
``features`` variants: the same system with one optional feature on.

A variant is an instance of :class:`SoniqSystem` with other settings and job options, never a
copy of it: ``soniq+webhooks`` (one endpoint for every job event, pointing at a receiver that
accepts connections and never answers), ``soniq+logs`` (``capture_job_logs=True``; ``noop`` logs
one INFO line through ``ctx.logger``) and ``soniq+encrypt`` (``@app.job(encrypt=True)`` with a
fixed benchmark key). The worker subprocess builds the variant by name, so the producer and the
worker always agree on its settings.
"""

from __future__ import annotations

import base64
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import SocketAttribute

import soniq
from benchmarks.databases import ProbeSql
from soniq import JobContext, Soniq  # JobContext at run time: Soniq resolves job annotations

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from anyio.abc import SocketStream, TaskStatus

    from benchmarks.databases import Target

__all__ = ["ENCRYPT", "HELD_JOBS", "HELD_QUEUE", "LIMITED_GROUPED", "LIMITED_ROUND_ROBIN",
           "LIMIT_KEYS", "LOGS", "NEIGHBOUR_HELD", "QUEUE_RATE", "SYSTEM", "WEBHOOKS",
           "SoniqSystem", "make_app", "silent_receiver"]

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

#: ``soniq+held-neighbour``: a second queue with a backlog of more urgent jobs (priority 0; the
#: default is 100, lower runs first), limited to 5 running at once and paused for the whole step.
HELD_QUEUE = "held"
HELD_JOBS = 100_000
HELD_PRIORITY = 0
HELD_CONCURRENCY = 5
#: The burn-down's probe of ``soniq+held-neighbour``: the default queue's jobs only.
_PG_PROBE_UNHELD = ProbeSql(
    remaining=f"SELECT EXISTS (SELECT 1 FROM soniq_jobs WHERE status = 'queued' "
              f"AND queue <> '{HELD_QUEUE}') OR EXISTS (SELECT 1 FROM soniq_jobs "
              f"WHERE status = 'processing' AND queue <> '{HELD_QUEUE}')",
    last_done=_PG_PROBE.last_done, done=_PG_PROBE.done,
    queued=f"SELECT count(*) FROM soniq_jobs WHERE status = 'queued' AND queue <> '{HELD_QUEUE}'",
    done_before=_PG_PROBE.done_before,
    counts=(("held_queued", (f"SELECT count(*) FROM soniq_jobs WHERE queue = '{HELD_QUEUE}' "
                             "AND status = 'queued'")),
            ("held_started", (f"SELECT count(*) FROM soniq_jobs WHERE queue = '{HELD_QUEUE}' "
                              "AND started_at IS NOT NULL"))),
)

#: A Fernet key (32 bytes, URL-safe base64) for ``soniq+encrypt``; a benchmark key, not a secret.
BENCH_SECRET_KEY = base64.urlsafe_b64encode(b"soniq benchmarks: not a secret!!").decode()


#: Concurrency-limit keys of the ``limits`` group: 1,000 of them, each job's key from its index
#: ``i`` -- taken round-robin (neighbours differ) or grouped (100 neighbours share one).
LIMIT_KEYS = {"round-robin": lambda i: i % 1_000, "grouped": lambda i: i // 100 % 1_000}


def make_app(url: str, stamps: dict[int, float] | None = None, *,
             settings: Mapping[str, Any] | None = None, encrypt: bool = False,
             log_line: bool = False, limited: bool = False, held: bool = False) -> Soniq:
    """The benchmark app: ``noop(i)`` and ``stamp(i)``, registered as they would be by a user.

    ``settings`` are extra :class:`~soniq.Soniq` keywords; ``encrypt`` registers both jobs with
    ``encrypt=True``; ``log_line`` makes ``noop`` log one INFO line through ``ctx.logger``;
    ``limited`` registers ``noop(i, k)`` with ``concurrency_limit=1, concurrency_key="k"``;
    ``held`` also registers ``urgent(i)`` in queue :data:`HELD_QUEUE` (priority 0).
    """
    app = Soniq(database_url=url, **(settings or {}))
    options: dict[str, Any] = {"encrypt": True} if encrypt else {}

    if limited:
        @app.job(name="noop", concurrency_limit=1, concurrency_key="k", **options)
        async def noop_limited(i: int, k: int = 0) -> None:
            return None
    elif log_line:
        @app.job(name="noop", **options)
        async def noop_logging(i: int, ctx: JobContext) -> None:
            ctx.logger.info("noop %d", i)
    else:
        @app.job(name="noop", **options)
        async def noop(i: int) -> None:
            return None

    @app.job(name="stamp", **options)
    async def stamp(i: int) -> None:
        if stamps is not None:
            stamps[i] = time.time()

    if held:
        @app.job(name="urgent", queue=HELD_QUEUE, priority=HELD_PRIORITY, **options)
        async def urgent(i: int) -> None:
            return None

    return app


class _Producer:
    def __init__(self, app: Soniq, keys: str | None = None) -> None:
        self._app = app
        # Enqueue by function, as the README does (a job name would work too).
        self._functions = {spec.name: spec.func for spec in app.registry}
        self._key = None if keys is None else LIMIT_KEYS[keys]

    async def enqueue_one(self, i: int, job: str = "noop") -> None:
        await self._app.enqueue(self._functions[job], i=i)

    async def enqueue_bulk(self, first: int, count: int) -> None:
        key = self._key
        await self._app.enqueue_many(self._functions["noop"], [
            {"i": i} if key is None else {"i": i, "k": key(i)}
            for i in range(first, first + count)])

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


async def _hold(stream: SocketStream) -> None:
    """Read and discard whatever the client sends; never answer."""
    async with stream:
        try:
            async for _chunk in stream:
                pass
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


@asynccontextmanager
async def silent_receiver() -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 (a free port) that accepts every connection and never answers;
    yields its ``http://`` URL. Connections are held until the block ends."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:  # the listener closes last
        tg.start_soon(listener.serve, _hold)
        try:
            yield f"http://127.0.0.1:{port}/hook"
        finally:
            tg.cancel_scope.cancel()


@dataclass(frozen=True)
class SoniqSystem:
    """Soniq, plain (``soniq``) or with one feature on (see the module docstring)."""

    name: str = "soniq"
    #: Extra ``Soniq(...)`` keywords, in the producer and the worker alike.
    settings: Mapping[str, Any] = field(default_factory=dict)
    encrypt: bool = False
    log_line: bool = False
    #: Register one webhook endpoint (every event) at a silent receiver for the whole step.
    silent_webhook: bool = False
    #: Extra counts the probe reads after a burn-down (PostgreSQL): proof the feature was on.
    evidence: tuple[tuple[str, str], ...] = ()
    #: ``noop`` has ``concurrency_limit=1`` per key; the keys are taken as :data:`LIMIT_KEYS`
    #: says (the ``limits`` group).
    limit_keys: str | None = None
    #: Around the step, :data:`HELD_JOBS` jobs wait in queue :data:`HELD_QUEUE`, which has a
    #: concurrency limit and is paused; the probe watches the other queues only.
    held_neighbour: bool = False

    def version(self) -> str:
        return str(soniq.__version__)

    def app(self, url: str, stamps: dict[int, float] | None = None) -> Soniq:
        return make_app(url, stamps, settings=self.settings, encrypt=self.encrypt,
                        log_line=self.log_line, limited=self.limit_keys is not None,
                        held=self.held_neighbour)

    def probe_sql(self, target: Target) -> ProbeSql:
        if target.kind != "postgres":
            return _SQLITE_PROBE
        if self.held_neighbour:
            return _PG_PROBE_UNHELD
        return replace(_PG_PROBE, counts=self.evidence) if self.evidence else _PG_PROBE

    async def install(self, target: Target) -> None:
        app = self.app(target.url)
        try:
            await app.setup()
        finally:
            await app.close()

    @asynccontextmanager
    async def surroundings(self, target: Target) -> AsyncIterator[None]:
        """What the step needs around it, after ``install``: the silent webhook receiver (kept
        until the worker has stopped) and its endpoint, for ``soniq+webhooks``; the held queue's
        backlog, limit and pause for ``soniq+held-neighbour``."""
        if self.held_neighbour:
            await self._hold_neighbour(target)
        if not self.silent_webhook:
            yield
            return
        async with silent_receiver() as url:
            app = self.app(target.url)
            try:
                await app.webhooks.register(url, events=(os.environ["HOOKEV"].split(",") if os.environ.get("HOOKEV") else None), allow_private=True,
                                            description="benchmark: a receiver that never answers")
            finally:
                await app.close()
            yield

    async def _hold_neighbour(self, target: Target) -> None:
        app = self.app(target.url)
        try:
            urgent = next(spec.func for spec in app.registry if spec.name == "urgent")
            for start in range(0, HELD_JOBS, 5_000):
                await app.enqueue_many(urgent, [{"i": i} for i in range(start, start + 5_000)])
            await app.queues.set_concurrency_limit(HELD_QUEUE, HELD_CONCURRENCY)
            await app.queues.pause(HELD_QUEUE, actor="benchmarks")
        finally:
            await app.close()

    async def open_producer(self, target: Target) -> _Producer:
        app = self.app(target.url)
        await app.ensure_initialized()
        return _Producer(app, self.limit_keys)

    async def open_worker(self, target: Target, concurrency: int,
                          stamps: dict[int, float]) -> _Worker:
        app = self.app(target.url, stamps)
        await app.ensure_initialized()
        return _Worker(app, concurrency)


SYSTEM: Any = SoniqSystem()
#: Job events a webhook endpoint has: as delivery rows, still in the webhooks' log, or still in
#: the backend's event log (the benchmark registers one endpoint).
_RECORDED_EVENTS = ("SELECT (SELECT count(*) FROM soniq_webhook_deliveries)"
                    " + (SELECT coalesce(sum(cardinality(array_remove(kinds, NULL))"
                    " + cardinality(array_remove(started_ats, NULL))), 0)"
                    " FROM soniq_webhook_events)"
                    " + (SELECT coalesce(sum(cardinality(array_remove(kinds, NULL))"
                    " + cardinality(array_remove(started_ats, NULL))), 0) FROM soniq_events)")
#: The ``features`` variants (registered in :mod:`benchmarks.systems`).
WEBHOOKS: Any = SoniqSystem(
    name="soniq+webhooks", settings={"webhook_allow_private": True}, silent_webhook=True,
    evidence=(("webhook_events", _RECORDED_EVENTS),))
LOGS: Any = SoniqSystem(
    name="soniq+logs", settings={"capture_job_logs": True}, log_line=True,
    evidence=(("log_records", "SELECT count(*) FROM soniq_job_logs"),))
ENCRYPT: Any = SoniqSystem(
    name="soniq+encrypt", settings={"secret_keys": [BENCH_SECRET_KEY]}, encrypt=True,
    evidence=(("encrypted_jobs", "SELECT count(*) FROM soniq_jobs WHERE args ? '$enc'"),))
#: The ``limits`` group: ``noop`` limited to one running job per key, 1,000 keys.
LIMITED_ROUND_ROBIN: Any = SoniqSystem(name="soniq+limit-rr", limit_keys="round-robin")
LIMITED_GROUPED: Any = SoniqSystem(name="soniq+limit-grouped", limit_keys="grouped")
#: The ``limits`` group's neighbour test: plain ``noop`` burn-down on the default queue beside a
#: paused, concurrency-limited queue with a backlog of more urgent jobs.
NEIGHBOUR_HELD: Any = SoniqSystem(name="soniq+held-neighbour", held_neighbour=True)
#: The ``limits`` group's queue rate limit: plain ``noop``; the scenario sets the rate.
QUEUE_RATE: Any = SoniqSystem(name="soniq+queue-rate")
