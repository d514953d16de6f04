"""The claim stays an ordered index walk at 100 000 queued rows, for every filter shape
(DESIGN.md §4: a Sort or Seq Scan here costs 20-30x per claim), and a paused queue's backlog is
not walked by the claims a worker uses while it knows of the pause.

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
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from soniq.backends.postgres import PostgresBackend, sql
from soniq.backends.postgres.queues import claims as queue_claims
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

#: The job names a worker met and did not register ($5): none (the usual claim), or some (a
#: worker of a rolling deploy's old version; none of these rows is theirs).
UNKNOWN = ["deploy.new_job", "deploy.other_job"]

SHAPES = [
    # (label, the Sql attribute, extra parameters, index the claim must walk)
    ("all queues", "claim_all_queues", ([],), "soniq_jobs_claim_idx"),
    ("one queue", "claim_one_queue", ([], "q1"), "soniq_jobs_queue_claim_idx"),
    ("several queues", "claim_some_queues", ([], QUEUES[:3]), "soniq_jobs_claim_idx"),
    ("all queues, unknown names", "claim_all_queues", (UNKNOWN,), "soniq_jobs_claim_idx"),
    ("one queue, unknown names", "claim_one_queue", (UNKNOWN, "q1"),
     "soniq_jobs_queue_claim_idx"),
    ("several queues, unknown names", "claim_some_queues", (UNKNOWN, QUEUES[:3]),
     "soniq_jobs_claim_idx"),
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


def _bad(nodes: list[dict[str, Any]]) -> list[str]:
    """Sorts and Seq Scans, but for the init plan reading the (small) queue settings."""
    return [n["Node Type"] for n in nodes
            if n["Node Type"] in ("Sort", "Incremental Sort")
            or n["Node Type"] == "Seq Scan" and n.get("Relation Name") != "soniq_queues"]


def _literal(value: object) -> str:
    """SQL literal for the few trusted test values EXECUTE needs (it takes no bind parameters)."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]::text[]"
    assert isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9._-]+", value), value
    return f"'{value}'"


async def _explain(conn: asyncpg.Connection, query: str, params: tuple[object, ...],
                   *, generic: bool, options: str = "ANALYZE") -> list[dict[str, Any]]:
    """The executed plan's nodes. EXPLAIN ANALYZE really claims: roll it back."""
    tx = conn.transaction()
    await tx.start()
    try:
        if generic:
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE soniq_claim AS {query}")
            args = ", ".join(_literal(p) for p in params)
            text = await conn.fetchval(
                f"EXPLAIN ({options}, FORMAT JSON) EXECUTE soniq_claim({args})")
            await conn.execute("DEALLOCATE soniq_claim")
        else:
            text = await conn.fetchval(f"EXPLAIN ({options}, FORMAT JSON) {query}", *params)
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
        assert not _bad(nodes), (label, summary)
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
                await conn.fetch(q.claim_all_queues, new_id(), None, LIMIT, new_id(), [])
        await conn.execute(finished, ROWS)
        name = await conn.fetchval(
            "SELECT name FROM pg_prepared_statements WHERE statement = $1", q.claim_all_queues)
        assert name is not None, "the claim did not go through a cached prepared statement"
        async with conn.transaction():
            text = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}('{new_id()}', NULL, {LIMIT}, '{new_id()}', "
                "ARRAY[]::text[])")
            await conn.execute(f"TRUNCATE {q.names.jobs} CASCADE")
        return _nodes(json.loads(text)[0]["Plan"])
    finally:
        await conn.close()


@pytest.mark.slow
def test_claim_plan_cached_on_a_small_table_stays_an_index_lookup(
        claims: tuple[str, sql.Sql]) -> None:
    nodes = asyncio.run(_claim_after_growth(*claims))
    summary = [(n["Node Type"], n.get("Index Name")) for n in nodes]
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"
                and n.get("Relation Name") != "soniq_queues"], summary
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
        return await _explain(conn, q.claim_all_queues, (new_id(), None, LIMIT, new_id(), []),
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
    assert not _bad(nodes), summary
    assert "soniq_jobs_claim_idx" in {n.get("Index Name") for n in nodes}, summary


# -- a paused queue ---------------------------------------------------------------------------------
#: (label, the statement, extra parameters, rows claimed): the claims of a worker that knows
#: "urgent" is paused (soniq.backends.postgres.queues), and a worker of the paused queue alone.
PAUSED_SHAPES: list[tuple[str, Callable[[sql.Sql], str], tuple[object, ...], int]] = [
    ("every queue", lambda q: queue_claims(q.names).unpaused, ([],), LIMIT),
    ("listed queues", lambda q: queue_claims(q.names).listed_unpaused,
     ([], ["urgent", "normal"]), LIMIT),
    ("the paused queue alone", lambda q: q.claim_one_queue, ([], "urgent"), 0),
    ("every queue, unknown names", lambda q: queue_claims(q.names).unpaused, (UNKNOWN,), LIMIT),
]

DUE = """
INSERT INTO {jobs} (id, job_name, queue, priority, status, args, max_attempts, scheduled_at)
SELECT gen_random_uuid(), 'plan.job', $2::text, $3::smallint, 'queued', '{{}}', 3,
       now() - interval '2 hours' + g * interval '1 millisecond'
FROM generate_series(1, $1::integer) AS g
"""


async def _explain_paused(url: str, q: sql.Sql) -> tuple[
        dict[tuple[str, str], list[dict[str, Any]]], dict[str, set[str]]]:
    """100 000 due rows in the paused queue "urgent" (priority 0, claimed first if it were not
    paused) and 100 000 in "normal" (priority 10): each claim explained, and run (rolled back)
    to see which queues it took."""
    n = q.names
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(DUE.format(jobs=n.jobs), ROWS, "urgent", 0)
            await conn.execute(DUE.format(jobs=n.jobs), ROWS, "normal", 10)
            await conn.execute(f"INSERT INTO {n.queues} (name, paused) VALUES ('urgent', true)")
        await conn.execute(f"ANALYZE {n.jobs}")
        plans, taken = {}, {}
        for label, statement, extra, _ in PAUSED_SHAPES:
            params = (new_id(), None, LIMIT, new_id(), *extra)
            for plan in PLANS:
                plans[label, plan] = await _explain(conn, statement(q), params,
                                                    generic=plan == "generic",
                                                    options="ANALYZE, BUFFERS")
            tx = conn.transaction()
            await tx.start()
            try:
                taken[label] = {row["queue"] for row in await conn.fetch(statement(q), *params)}
            finally:
                await tx.rollback()
        return plans, taken
    finally:
        try:
            await conn.execute(f"TRUNCATE {n.jobs}, {n.queues} CASCADE")
        finally:
            await conn.close()


@pytest.mark.slow
def test_a_paused_queue_backlog_is_not_walked(claims: tuple[str, sql.Sql]) -> None:
    """Index walks only: no Sort but the final one over at most LIMIT rows per unpaused queue, no
    Seq Scan of the jobs, rows removed by filter and buffers bounded (not proportional to the
    paused backlog)."""
    plans, taken = asyncio.run(_explain_paused(*claims))
    for (label, plan), nodes in plans.items():
        claimed = {shape[0]: shape[3] for shape in PAUSED_SHAPES}[label]
        summary = [(n["Node Type"], n.get("Index Name"), n.get("Actual Rows"),
                    n.get("Rows Removed by Filter")) for n in nodes]
        where = f"{label}, {plan} plan", summary
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"
                    and n.get("Relation Name") != "soniq_queues"], where
        for sort in (n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")):
            [below] = sort["Plans"]
            assert below["Actual Rows"] * below["Actual Loops"] <= 2 * LIMIT, where
        removed = max(n.get("Rows Removed by Filter", 0) for n in nodes)
        assert removed <= LIMIT, where
        blocks = nodes[0]["Shared Hit Blocks"] + nodes[0]["Shared Read Blocks"]
        assert blocks < 2000, (blocks, where)
        [update] = [n for n in nodes if n["Node Type"] == "ModifyTable"]
        assert update["Actual Rows"] == claimed, where
        if claimed:
            assert "soniq_jobs_queue_claim_idx" in {n.get("Index Name") for n in nodes}, where
    assert taken == {"every queue": {"normal"}, "listed queues": {"normal"},
                     "the paused queue alone": set(), "every queue, unknown names": {"normal"}}


async def _explain_waiting(url: str, q: sql.Sql) -> list[dict[str, Any]]:
    """The claim of every queue with 100 000 waiting rows (dependencies not finished) of a more
    urgent priority ahead of 100 000 queued ones."""
    jobs = q.names.jobs
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(LOAD.format(jobs=jobs), ROWS, timedelta(hours=-2))
            await conn.execute(f"UPDATE {jobs} SET status = 'waiting', waiting_on = 1, "
                               "priority = -10")
            await conn.execute(LOAD.format(jobs=jobs), ROWS, timedelta(hours=-2))
        await conn.execute(f"ANALYZE {jobs}")
        return await _explain(conn, q.claim_all_queues, (new_id(), None, LIMIT, new_id(), []),
                              generic=False, options="ANALYZE, BUFFERS")
    finally:
        try:
            await conn.execute(f"TRUNCATE {jobs} CASCADE")
        finally:
            await conn.close()


@pytest.mark.slow
def test_waiting_steps_are_not_walked(claims: tuple[str, sql.Sql]) -> None:
    """Jobs waiting for their dependencies are not in the claim's index: the claim walks the
    queued rows only (no Sort, no Seq Scan of the jobs, nothing removed by filter, buffers
    bounded) and claims LIMIT of them."""
    nodes = asyncio.run(_explain_waiting(*claims))
    summary = [(n["Node Type"], n.get("Index Name"), n.get("Actual Rows"),
                n.get("Rows Removed by Filter")) for n in nodes]
    assert not _bad(nodes), summary
    assert max(n.get("Rows Removed by Filter", 0) for n in nodes) == 0, summary
    assert nodes[0]["Shared Hit Blocks"] + nodes[0]["Shared Read Blocks"] < 2000, summary
    [update] = [n for n in nodes if n["Node Type"] == "ModifyTable"]
    assert update["Actual Rows"] == LIMIT, summary
