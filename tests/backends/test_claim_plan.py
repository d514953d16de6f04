"""The claim stays an ordered index walk at 100 000 queued rows, for every filter shape
(DESIGN.md §4: a Sort or Seq Scan here costs 20-30x per claim).

EXPLAIN ANALYZE runs the exact SQL text the backend runs (imported from ``sql.py``), so this test
cannot drift from the code. Each shape is checked twice: with its parameters known (the custom
plan every execution starts with) and as the generic plan PostgreSQL may cache for a prepared
statement after five executions, where LIMIT and the queue list are unknown.

Each test runs in the default schema and in a ``db_schema`` of its own: the statements name
their tables in full there, and must plan the same.

It is a synchronous test on ``asyncio.run``: it measures the server's planner, which does not
care which event loop the client runs, and loading 200 000 rows twice (asyncio and trio) would
double its cost for no extra coverage.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from soniq.backends.postgres import PostgresBackend, sql
from soniq.backends.postgres.schema import CUSTOM_PLANS, SERVER_SETTINGS
from soniq.ids import new_id
from soniq.settings import load_settings

pytestmark = pytest.mark.postgres

ROWS = 100_000
LIMIT = 100
QUEUES = ["q0", "q1", "q2", "q3"]

# Due rows spread over 4 queues and 3 priorities, plus as many scheduled a day ahead in the same
# queues and priorities (retries and scheduled jobs sit in the same partial index).
LOAD = """
INSERT INTO {jobs} (id, job_name, queue, priority, status, args, max_attempts, scheduled_at)
SELECT gen_random_uuid(), 'plan.job', 'q' || (g % 4), (g % 3) * 10, 'queued', '{{}}', 3,
       now() + $2::interval + g * interval '1 millisecond'
FROM generate_series(1, $1::integer) AS g
"""

SHAPES = [
    # (label, the Sql attribute, extra parameters, index the claim must walk)
    ("all queues", "claim_all_queues", (), "soniq_jobs_claim_idx"),
    ("one queue", "claim_one_queue", ("q1",), "soniq_jobs_queue_claim_idx"),
    ("several queues", "claim_some_queues", (QUEUES[:3],), "soniq_jobs_claim_idx"),
]


@pytest.fixture(params=[None, "claim_plan"], ids=["default schema", "db_schema"])
def claims(request: pytest.FixtureRequest, pg_url: str) -> tuple[str, sql.Sql]:
    """(url, statements) of the default schema, or of a db_schema set up in the same database."""
    schema = request.param
    if schema is not None:
        async def setup() -> None:
            backend = PostgresBackend(pg_url, load_settings({"database_url": pg_url,
                                                             "db_schema": schema}))
            try:
                await backend.migrate()
            finally:
                await backend.close()

        asyncio.run(setup())
    return pg_url, sql.build(schema)


PLANS = ["custom", "generic"]


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def _literal(value: object) -> str:
    """SQL literal for the few trusted test values EXECUTE needs (it takes no bind parameters)."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]::text[]"
    assert isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9-]+", value), value
    return f"'{value}'"


async def _explain(conn: asyncpg.Connection, query: str, params: tuple[object, ...],
                   *, generic: bool) -> list[dict[str, Any]]:
    """The executed plan's nodes. EXPLAIN ANALYZE really claims: roll it back."""
    tx = conn.transaction()
    await tx.start()
    try:
        if generic:
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE soniq_claim AS {query}")
            args = ", ".join(_literal(p) for p in params)
            text = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE soniq_claim({args})")
            await conn.execute("DEALLOCATE soniq_claim")
        else:
            text = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *params)
    finally:
        await tx.rollback()
    return _nodes(json.loads(text)[0]["Plan"])


async def _explain_claims(url: str, q: sql.Sql) -> dict[tuple[str, str], list[dict[str, Any]]]:
    jobs = q.names.jobs
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(LOAD.format(jobs=jobs), ROWS, timedelta(hours=-2))
            await conn.execute(LOAD.format(jobs=jobs), ROWS, timedelta(days=1))
        await conn.execute(f"ANALYZE {jobs}")
        plans = {}
        for label, attribute, extra, _ in SHAPES:
            params = (new_id(), None, LIMIT, new_id(), *extra)
            for plan in PLANS:
                plans[label, plan] = await _explain(conn, getattr(q, attribute), params,
                                                    generic=plan == "generic")
        return plans
    finally:
        try:
            await conn.execute(f"TRUNCATE {jobs} CASCADE")  # soniq_job_logs references it
        finally:
            await conn.close()


@pytest.mark.slow
def test_claim_walks_an_index_for_every_filter_shape(claims: tuple[str, sql.Sql]) -> None:
    plans = asyncio.run(_explain_claims(*claims))
    for (label, plan), nodes in plans.items():
        index = {shape[0]: shape[3] for shape in SHAPES}[label]
        label = f"{label}, {plan} plan"
        summary = [(n["Node Type"], n.get("Index Name"), n.get("Rows Removed by Filter"))
                   for n in nodes]
        types = {n["Node Type"] for n in nodes}
        assert not types & {"Sort", "Incremental Sort", "Seq Scan"}, (label, summary)
        removed = max(n.get("Rows Removed by Filter", 0) for n in nodes)
        assert removed <= LIMIT, (label, summary)
        assert index in {n.get("Index Name") for n in nodes}, (label, summary)
        [update] = [n for n in nodes if n["Node Type"] == "ModifyTable"]
        assert update["Actual Rows"] == LIMIT, (label, summary)


# -- a plan cached while the table was small -------------------------------------------------------
FINISHED = """
INSERT INTO {jobs} (id, job_name, queue, priority, status, args, max_attempts, finished_at)
SELECT gen_random_uuid(), 'plan.job', 'q0', 0, 'done', '{{}}', 3, now()
FROM generate_series(1, $1::integer) AS g
"""


async def _claim_after_growth(url: str, q: sql.Sql) -> list[dict[str, Any]]:
    """Run the claim ten times on a connection set up like the worker loops' pool, on a near-empty
    table (past the five custom plans after which PostgreSQL may switch to a cached generic plan),
    let finished rows pile up without an ANALYZE, and explain the *prepared* statement as the next
    execution would run it."""
    finished = FINISHED.format(jobs=q.names.jobs)
    conn = await asyncpg.connect(url, server_settings=SERVER_SETTINGS | CUSTOM_PLANS)
    try:
        await conn.execute(finished, 1)
        for _ in range(10):
            async with conn.transaction():
                await conn.fetch(q.claim_all_queues, new_id(), None, LIMIT, new_id())
        await conn.execute(finished, ROWS)
        name = await conn.fetchval(
            "SELECT name FROM pg_prepared_statements WHERE statement = $1", q.claim_all_queues)
        assert name is not None, "the claim did not go through a cached prepared statement"
        async with conn.transaction():
            text = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}('{new_id()}', NULL, {LIMIT}, '{new_id()}')")
            await conn.execute(f"TRUNCATE {q.names.jobs} CASCADE")
        return _nodes(json.loads(text)[0]["Plan"])
    finally:
        await conn.close()


@pytest.mark.slow
def test_claim_plan_cached_on_a_small_table_stays_an_index_lookup(
        claims: tuple[str, sql.Sql]) -> None:
    nodes = asyncio.run(_claim_after_growth(*claims))
    summary = [(n["Node Type"], n.get("Index Name")) for n in nodes]
    assert "Seq Scan" not in {n["Node Type"] for n in nodes}, summary
    assert "soniq_jobs_pkey" in {n.get("Index Name") for n in nodes}, summary


# -- a backlog loaded after the last statistics -----------------------------------------------------
async def _claim_plan_after_worker_start(url: str, q: sql.Sql) -> list[dict[str, Any]]:
    """Load a due backlog without ANALYZE (autovacuum is off on the test server, as it may be
    behind on a busy one), start a worker (register it), and explain the next claim."""
    from soniq.types import WorkerInfo

    n = q.names
    conn = await asyncpg.connect(url)
    backend = PostgresBackend(url, load_settings({"database_url": url, "db_schema": n.schema}))
    try:
        await conn.execute(LOAD.format(jobs=n.jobs), ROWS, timedelta(hours=-2))

        async def counted() -> bool:  # the server's statistics see the load within a second
            return bool(await conn.fetchval(
                "SELECT n_mod_since_analyze >= $1 FROM pg_stat_user_tables "
                f"WHERE relid = '{n.jobs}'::regclass", ROWS))

        deadline = asyncio.get_running_loop().time() + 10
        while not await counted():
            assert asyncio.get_running_loop().time() < deadline, "statistics never counted the load"
            await asyncio.sleep(0.1)
        await backend.register_worker(WorkerInfo(id=new_id(), hostname="h", pid=1, queues=None,
                                                 concurrency=100))
        return await _explain(conn, q.claim_all_queues, (new_id(), None, LIMIT, new_id()),
                              generic=False)
    finally:
        await backend.close()
        try:
            await conn.execute(f"TRUNCATE {n.jobs}, {n.workers} CASCADE")
        finally:
            await conn.close()


@pytest.mark.slow
def test_a_worker_starting_on_an_unanalyzed_backlog_gets_an_index_walk(
        claims: tuple[str, sql.Sql]) -> None:
    nodes = asyncio.run(_claim_plan_after_worker_start(*claims))
    summary = [(n["Node Type"], n.get("Index Name")) for n in nodes]
    assert not {n["Node Type"] for n in nodes} & {"Sort", "Incremental Sort", "Seq Scan"}, summary
    assert "soniq_jobs_claim_idx" in {n.get("Index Name") for n in nodes}, summary
