"""The ceilings: bare asyncpg on Soniq's own table (same schema, same indexes).

Enqueue, on one connection, one autocommitted statement per call, Soniq's row shape:

- one job per call: ``INSERT ... VALUES (...)`` (the commit is implicit);
- many jobs per call: one binary ``COPY`` per chunk (``copy_records_to_table``), the fastest
  way asyncpg writes rows.

The claim+finish floor (the ``process`` group, concurrency = connections, 4 in the plan): each
connection loops over Soniq's own claim statement (100 jobs, ``FOR UPDATE SKIP LOCKED``, per-job
leases from a key new per claim) returning only the ids, then one batched ``UPDATE`` to ``done``
fenced like Soniq's finish (``status = 'processing'`` and the lease), until a claim comes back
empty. No job is run and nothing per job happens in Python beyond collecting the ids: what
draining the table costs PostgreSQL and the driver, below which no worker can go.

The wake-up floor (system ``asyncpg+notify``, the ``latency`` group): the producer inserts Soniq's
row and notifies Soniq's channel in one autocommitted statement; in the worker process a LISTEN
callback on one connection wakes a loop that runs Soniq's claim (returning the ids and ``i``) on
another until it comes back empty, recording ``time.time()`` for each job the moment the claim
returned it, then finishes the claim like the floor above (outside the measured latency).

No NOTIFY, no validation, no JSON encoding beyond a fixed string: what Soniq would cost if it
did nothing but the write. With Soniq's indexes in place, the bulk ceiling is PostgreSQL's own
index maintenance (docs/guides/performance.md).
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from benchmarks.systems.soniq_system import SYSTEM as SONIQ
from soniq.backends.postgres.schema import CUSTOM_PLANS
from soniq.backends.postgres.sql import COPY_COLUMNS, build
from soniq.ids import new_id, new_ids

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from benchmarks.databases import ProbeSql, Target

__all__ = ["SYSTEM", "WAKE"]

_SQL = build(None)  # the default schema's statements
CHANNEL = _SQL.names.jobs_channel
CLAIM_ALL_QUEUES = _SQL.claim_all_queues

_INSERT_ONE = """
INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, max_attempts, scheduled_at)
VALUES ($1::uuid, $2::text, 'default', 100, 'queued', $3::jsonb, 4, now())
"""

_INSERT_NOTIFY = f"""
WITH job AS ({_INSERT_ONE} RETURNING queue)
SELECT pg_notify('{CHANNEL}', queue) FROM job
"""

#: Soniq's claim ($1 worker id, $2 now: NULL, $3 limit, $4 claim key), returning only the ids.
_CLAIM_IDS = CLAIM_ALL_QUEUES[:CLAIM_ALL_QUEUES.rindex("RETURNING")] + "RETURNING id"
#: The same, with each job's number (the wake-up floor's ``stamp``).
_CLAIM_NUMBERED = _CLAIM_IDS + ", (args->>'i')::int"
_CLAIM_BATCH = 100
#: $1 ids, $2 their claim's key: one fenced finish for the whole claim.
_FINISH = """
UPDATE soniq_jobs
SET status = 'done', lease_id = NULL, finished_at = now(), updated_at = now()
WHERE id = ANY($1::uuid[]) AND status = 'processing' AND lease_id = md5($2::text || id::text)::uuid
"""


class _Producer:
    def __init__(self, conn: Any, insert_one: str = _INSERT_ONE) -> None:
        self._conn = conn
        self._insert_one = insert_one

    async def enqueue_one(self, i: int, job: str = "noop") -> None:
        await self._conn.execute(self._insert_one, new_id(), job, f'{{"i": {i}}}')

    async def enqueue_bulk(self, first: int, count: int) -> None:
        records = [(job_id, "noop", "default", 100, "queued", f'{{"i": {i}}}', 4)
                   for i, job_id in enumerate(new_ids(count), start=first)]
        await self._conn.copy_records_to_table("soniq_jobs", records=records,
                                               columns=COPY_COLUMNS)

    async def aclose(self) -> None:
        await self._conn.close()


class _Floor:
    """The claim+finish floor: one task per connection, each draining the table."""

    def __init__(self, conns: list[Any]) -> None:
        self._conns = conns
        self._stopped = False

    async def _drain(self, conn: Any) -> None:
        while not self._stopped:
            key = secrets.token_hex(16)
            rows = await conn.fetch(_CLAIM_IDS, None, None, _CLAIM_BATCH, key, [])
            ids = [row[0] for row in rows]
            if not ids:
                return  # all jobs were there before ``go``: empty means drained (or taken)
            await conn.execute(_FINISH, ids, key)

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            for conn in self._conns:
                tg.start_soon(self._drain, conn)
            task_status.started()

    def stop(self) -> None:
        self._stopped = True

    async def aclose(self) -> None:
        for conn in self._conns:
            await conn.close()


class _Wake:
    """The wake-up floor: LISTEN on one connection, claim (and finish) on another."""

    def __init__(self, listener: Any, conn: Any, batch: int, stamps: dict[int, float]) -> None:
        self._listener, self._conn, self._batch, self._stamps = listener, conn, batch, stamps
        self._woken = anyio.Event()
        self._stopped = False

    def _on_notify(self, *_args: object) -> None:
        self._woken.set()

    async def _claim_all(self) -> None:
        while not self._stopped:
            key = secrets.token_hex(16)
            rows = await self._conn.fetch(_CLAIM_NUMBERED, None, None, self._batch, key, [])
            now = time.time()
            if not rows:
                return
            for _job_id, i in rows:
                self._stamps[i] = now
            await self._conn.execute(_FINISH, [row[0] for row in rows], key)

    async def _serve(self) -> None:
        while not self._stopped:
            await self._woken.wait()
            self._woken = anyio.Event()  # a NOTIFY during the claims below wakes us again
            await self._claim_all()

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        await self._listener.add_listener(CHANNEL, self._on_notify)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._serve)
            task_status.started()

    def stop(self) -> None:
        self._stopped = True
        self._woken.set()

    async def aclose(self) -> None:
        for conn in (self._listener, self._conn):
            await conn.close()


class BaselineSystem:
    name = "asyncpg"

    def version(self) -> str:
        return str(asyncpg.__version__)

    def probe_sql(self, target: Target) -> ProbeSql:
        return SONIQ.probe_sql(target)  # type: ignore[no-any-return]

    async def install(self, target: Target) -> None:
        await SONIQ.install(target)

    async def open_producer(self, target: Target) -> _Producer:
        return _Producer(await asyncpg.connect(target.url))

    async def open_worker(self, target: Target, concurrency: int,
                          stamps: dict[int, float]) -> _Floor:
        """The claim+finish floor on ``concurrency`` connections (it runs no job bodies), planned
        per execution like Soniq's worker connections."""
        return _Floor([await asyncpg.connect(target.url, server_settings=CUSTOM_PLANS)
                       for _ in range(concurrency)])


class WakeSystem(BaselineSystem):
    """The wake-up floor (``asyncpg+notify``): INSERT + pg_notify, LISTEN + claim."""

    name = "asyncpg+notify"

    async def open_producer(self, target: Target) -> _Producer:
        return _Producer(await asyncpg.connect(target.url), _INSERT_NOTIFY)

    async def open_worker(self, target: Target, concurrency: int,  # type: ignore[override]
                          stamps: dict[int, float]) -> _Wake:
        """Claims up to ``concurrency`` jobs at a time, like Soniq's worker of that size."""
        return _Wake(await asyncpg.connect(target.url),
                     await asyncpg.connect(target.url, server_settings=CUSTOM_PLANS),
                     concurrency, stamps)


SYSTEM: Any = BaselineSystem()
WAKE: Any = WakeSystem()
