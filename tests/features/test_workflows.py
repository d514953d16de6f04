"""Workflows and batches (``app.workflow``, ``app.enqueue_batch``, ``app.workflows``) on every
backend, under asyncio and trio; the ``soniq workflows`` CLI through a real subprocess."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from soniq import Soniq
from soniq.errors import JobArgumentsError, UnknownJobError, ValidationError
from soniq.types import JobContext
from tests.cli.cli import clean_env, soniq

pytestmark = pytest.mark.anyio


def register(app: Soniq) -> dict[str, list[Any]]:
    """Jobs of a nightly report; ``seen`` records what ran (and what the callback received)."""
    seen: dict[str, list[Any]] = {"ran": [], "callback": []}

    @app.job(name="fetch")
    async def fetch(day: str) -> int:
        seen["ran"].append("fetch")
        return len(day)

    @app.job(name="transform")
    async def transform(ctx: JobContext, factor: int = 2) -> int:
        seen["ran"].append("transform")
        return int(ctx.dependency_results["fetch"]) * factor

    @app.job(name="audit")
    async def audit(ctx: JobContext) -> int:
        seen["ran"].append("audit")
        return int(ctx.dependency_results["fetch"]) + 1

    @app.job(name="load")
    async def load(ctx: JobContext) -> dict[str, Any]:
        seen["ran"].append("load")
        results = ctx.dependency_results
        return {"sum": results["transform"] + results["audit"], "keys": sorted(results)}

    @app.job(name="item", retries=0)
    async def item(n: int) -> int:
        seen["ran"].append(f"item{n}")
        if n == 2:
            raise RuntimeError("bad item")
        return n

    @app.job(name="report")
    async def report(ctx: JobContext, label: str) -> None:
        seen["callback"].append((label, dict(ctx.dependency_results)))

    return seen


async def counts(app: Soniq) -> int:
    return sum(q["total"] for q in await app.get_queue_stats())


async def test_a_diamond_runs_to_completion_in_one_run_once(app: Soniq) -> None:
    seen = register(app)
    wf = app.workflow("nightly-report")
    a = wf.add("fetch", args={"day": "2026-12-07"})
    b = wf.add("transform", after=[a], args={"factor": 3})
    c = wf.add("audit", after=[a], name="audit")
    d = wf.add("load", after=[b, c], on_dependency_failure="cancel")
    assert (a.name, b.name, c.name, d.name) == ("fetch", "transform", "audit", "load")
    workflow_id = await wf.enqueue()

    before = await app.workflows.get(workflow_id)
    assert before is not None and before["status"] == "running"
    assert before["counts"]["waiting"] == 3 and before["counts"]["queued"] == 1

    await app.run_worker(run_once=True)
    assert seen["ran"][0] == "fetch" and seen["ran"][-1] == "load"
    info = await app.workflows.get(workflow_id)
    assert info is not None
    assert (info["name"], info["kind"], info["status"]) == ("nightly-report", "workflow", "done")
    steps = {step["name"]: step for step in info["steps"]}
    assert steps["load"]["depends_on"] == sorted(["transform", "audit"], key=lambda n: steps[n][
        "job_id"])
    assert steps["fetch"]["depends_on"] == []
    assert all(step["status"] == "done" and step["finished_at"] is not None
               for step in steps.values())
    assert await app.get_result(steps["load"]["job_id"]) == {
        "sum": 10 * 3 + 11, "keys": ["audit", "transform"]}
    record = await app.get_job(steps["audit"]["job_id"])
    assert record is not None
    assert (record["workflow_id"], record["step_name"]) == (workflow_id, "audit")
    plain = await app.get_job(await app.enqueue("fetch", day="x"))
    assert plain is not None and (plain["workflow_id"], plain["step_name"]) == (None, None)
    assert [w["id"] for w in await app.workflows.list(status="done")] == [workflow_id]
    assert await app.workflows.list(status="running") == []


async def test_step_names_default_to_the_job_name_made_unique(app: Soniq) -> None:
    register(app)
    wf = app.workflow("names")
    first = wf.add("transform")
    explicit = wf.add("transform", name="transform-3")
    second = wf.add("transform")
    third = wf.add("transform")
    assert [first.name, explicit.name, second.name, third.name] == [
        "transform", "transform-3", "transform-2", "transform-4"]
    with pytest.raises(ValidationError, match="already has a step named 'transform'"):
        wf.add("fetch", name="transform")


async def test_after_by_name_with_a_forward_reference(app: Soniq) -> None:
    seen = register(app)
    wf = app.workflow("forward")
    wf.add("load", after=["transform", "audit"])  # both added later
    wf.add("transform", after="fetch")
    wf.add("audit", after=["fetch"])
    wf.add("fetch", args={"day": "x"})
    workflow_id = await wf.enqueue()
    await app.run_worker(run_once=True)
    assert seen["ran"][0] == "fetch" and seen["ran"][-1] == "load"
    info = await app.workflows.get(workflow_id)
    assert info is not None and info["status"] == "done"


async def test_bad_input_is_refused_with_nothing_written(app: Soniq) -> None:
    register(app)
    cycle = app.workflow("cycle")
    cycle.add("fetch", args={"day": "x"}, after=["audit"])
    cycle.add("audit", after=["fetch"])
    with pytest.raises(ValidationError, match="cycle"):
        await cycle.enqueue()

    unknown = app.workflow("unknown")
    unknown.add("fetch", args={"day": "x"}, after=["nope"])
    with pytest.raises(ValidationError, match="nope"):
        await unknown.enqueue()

    other = app.workflow("other")
    foreign = other.add("fetch", args={"day": "x"})
    mine = app.workflow("mine")
    with pytest.raises(ValidationError, match="belongs to workflow 'other'"):
        mine.add("audit", after=[foreign])

    with pytest.raises(ValidationError, match="no steps"):
        await app.workflow("empty").enqueue()
    with pytest.raises(JobArgumentsError, match="args must be a dict"):
        mine.add("fetch", args=["x"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="on_dependency_failure"):
        mine.add("fetch", args={"day": "x"}, on_dependency_failure="later")  # type: ignore[arg-type]

    late = app.workflow("late-error")  # a step's arguments are checked when enqueued
    late.add("fetch", args={"day": "x"})
    late.add("transform", args={"nope": 1}, after=["fetch"])
    with pytest.raises(JobArgumentsError):
        await late.enqueue()

    assert await counts(app) == 0
    assert await app.workflows.list() == []


async def test_enqueue_batch_runs_its_callback_once_with_the_counts(app: Soniq) -> None:
    seen = register(app)
    batch_id = await app.enqueue_batch("item", [{"n": 1}, {"n": 2}, {"n": 3}],
                                       on_complete="report", on_complete_args={"label": "x"})
    await app.run_worker(run_once=True)
    info = await app.workflows.get(batch_id)
    assert info is not None
    steps = {step["name"]: step for step in info["steps"]}
    assert list(steps) == ["#0", "#1", "#2", "on_complete"]
    assert seen["callback"] == [("x", {"done": 2, "dead_letter": 1, "cancelled": 0,
                                       "failed": [steps["#1"]["job_id"]]})]
    assert (info["kind"], info["name"], info["status"]) == ("batch", "item", "failed")
    assert steps["on_complete"]["depends_on"] == ["#0", "#1", "#2"]


async def test_a_batch_callback_must_be_a_registered_job(app: Soniq) -> None:
    register(app)

    async def not_a_job() -> None: ...

    with pytest.raises(UnknownJobError):
        await app.enqueue_batch("item", [{"n": 1}], on_complete="nope")
    with pytest.raises(UnknownJobError):
        await app.enqueue_batch("item", [{"n": 1}], on_complete=not_a_job)
    with pytest.raises(ValidationError, match="at least one job"):
        await app.enqueue_batch("item", [], on_complete="report",
                                on_complete_args={"label": "x"})
    assert await counts(app) == 0


async def test_get_list_and_cancel(app: Soniq) -> None:
    register(app)
    wf = app.workflow("to-cancel")
    a = wf.add("fetch", args={"day": "x"})
    wf.add("audit", after=[a])
    wf.add("report", args={"label": "cleanup"}, after=[a], on_dependency_failure="run")
    first = await wf.enqueue()
    second = await wf.enqueue()  # a builder enqueues a new workflow each time
    assert first != second
    assert [w["id"] for w in await app.workflows.list()] == [second, first]
    assert [w["id"] for w in await app.workflows.list(limit=1)] == [second]
    assert await app.workflows.get("00000000-0000-7000-8000-000000000000") is None
    assert await app.workflows.get("not-an-id") is None
    with pytest.raises(ValidationError):
        await app.workflows.list(status="stuck")  # type: ignore[arg-type]

    outcomes = await app.workflows.cancel(first)
    # Dependents first: the "run" cleanup step is cancelled, not released by its dependency.
    assert outcomes == {"report": "cancelled", "audit": "cancelled", "fetch": "cancelled"}
    info = await app.workflows.get(first)
    assert info is not None and info["status"] == "cancelled"
    assert {step["status"] for step in info["steps"]} == {"cancelled"}
    assert await app.workflows.cancel(first) == {}
    assert await app.workflows.cancel("00000000-0000-7000-8000-000000000000") is None
    assert [w["id"] for w in await app.workflows.list(status="cancelled")] == [first]
    assert [w["id"] for w in await app.workflows.list(status="running")] == [second]


async def test_enqueue_with_a_rolled_back_connection_leaves_nothing(
        app: Soniq, backend_name: str) -> None:
    if backend_name != "postgres":
        pytest.skip("connection= is PostgreSQL's")
    register(app)
    wf = app.workflow("atomic")
    a = wf.add("fetch", args={"day": "x"})
    wf.add("audit", after=[a])
    enqueued = []

    async def roll_back() -> None:
        async with app.backend.acquire() as conn, conn.transaction():
            enqueued.append(await wf.enqueue(connection=conn))
            raise LookupError("roll back")

    with pytest.raises(LookupError):
        await roll_back()
    assert await app.workflows.get(enqueued[0]) is None
    assert await counts(app) == 0
    async with app.backend.acquire() as conn, conn.transaction():
        committed = await wf.enqueue(connection=conn)
    info = await app.workflows.get(committed)
    assert info is not None and len(info["steps"]) == 2


def test_the_sync_facade_enqueues_workflows_and_batches(sqlite_url: str) -> None:
    import anyio

    app = Soniq(database_url=sqlite_url)
    seen = register(app)
    try:
        wf = app.sync.workflow("sync")
        a = wf.add("fetch", args={"day": "abc"})
        wf.add("audit", after=[a])
        workflow_id = wf.enqueue()
        batch_id = app.sync.enqueue_batch("item", [{"n": 1}], on_complete="report",
                                          on_complete_args={"label": "s"})

        async def main() -> tuple[Any, Any]:
            await app.run_worker(run_once=True)
            return await app.workflows.get(workflow_id), await app.workflows.get(batch_id)

        workflow, batch = anyio.run(main)
        assert workflow["status"] == "done" and batch["status"] == "done"
        assert seen["callback"] == [("s", {"done": 1, "dead_letter": 0, "cancelled": 0,
                                           "failed": []})]
    finally:
        anyio.run(app.close)


def test_the_cli_lists_shows_and_cancels(sqlite_url: str) -> None:
    import anyio

    async def setup() -> tuple[str, str]:
        async with Soniq(database_url=sqlite_url) as app:
            register(app)
            wf = app.workflow("cli-report")
            a = wf.add("fetch", args={"day": "x"})
            wf.add("audit", after=[a])
            return await wf.enqueue(), await wf.enqueue()

    first, second = anyio.run(setup)
    done = soniq("--database-url", sqlite_url, "workflows", "cancel", first, "--json",
                 env=clean_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": first, "steps": {"audit": "cancelled",
                                                              "fetch": "cancelled"}}
    done = soniq("--database-url", sqlite_url, "workflows", "list", env=clean_env())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "name", "kind", "status"]
    assert [line.split()[:4] for line in lines[1:]] == [
        [second, "cli-report", "workflow", "running"], [first, "cli-report", "workflow",
                                                        "cancelled"]]


def test_the_cli_shows_a_workflow(sqlite_url: str, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    from soniq.cli import main

    async def setup() -> str:
        async with Soniq(database_url=sqlite_url) as app:
            register(app)
            wf = app.workflow("shown")
            wf.add("audit", after=["fetch"])
            wf.add("fetch", args={"day": "x"})
            return await wf.enqueue()

    workflow_id = anyio.run(setup)
    for key in [k for k in os.environ if k.startswith("SONIQ_")]:
        monkeypatch.delenv(key)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--database-url", sqlite_url, "workflows", *args])
        out, err = capsys.readouterr()
        return int(exit_info.value.code or 0), out, err

    code, out, _ = run("show", workflow_id, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["status"] == "running"
    assert [(s["name"], s["depends_on"]) for s in shown["steps"]] == [
        ("audit", ["fetch"]), ("fetch", [])]
    code, out, _ = run("show", workflow_id)
    assert code == 0 and "shown" in out and "audit" in out
    code, _, err = run("show", "00000000-0000-7000-8000-000000000000")
    assert code == 1 and err.strip() == (
        "error: no workflow with id '00000000-0000-7000-8000-000000000000'")
