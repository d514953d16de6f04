"""The rows of a workflow's steps (``workflow_jobs``) and the order of a dependency graph
(``ordered``): pure functions, no backend."""

from __future__ import annotations

from datetime import UTC, datetime
from graphlib import CycleError

import pytest

from soniq.backends.dependencies import ordered
from soniq.features.workflows import Workflow, workflow_jobs
from soniq.types import NewJob, Uniqueness


def test_a_step_keeps_every_field_of_its_job_and_takes_the_steps_own() -> None:
    """Every field of the job as built (any field added to NewJob later too) survives; the
    workflow's fields come from the step."""
    async def submit(wf: Workflow, connection: object) -> str:
        raise AssertionError("not submitted")

    wf = Workflow("w", lambda target: str(target), submit)
    first = wf.add("a", name="first")
    wf.add("b", name="second", after=[first], on_dependency_failure="run")
    own = {"job_name": "b", "queue": "q", "priority": 7, "args": "{}", "max_attempts": 4,
           "scheduled_at": datetime(2026, 1, 1, tzinfo=UTC), "dedup_key": "k",
           "concurrency_key": "c", "concurrency_limit": 2, "rate_key": "r",
           "unique": Uniqueness(("queued", "processing"), 60.0, True, 5.0)}
    steps = wf.plan()
    jobs = [NewJob(id="1", **own), NewJob(id="2", **own)]
    assert set(own) | {"id"} | {"depends_on", "on_dependency_failure", "workflow_id",
                               "step_name"} == set(NewJob._fields), "a new NewJob field"
    rows = workflow_jobs("wf-id", steps, jobs)
    assert [row._asdict() for row in rows] == [
        {"id": "1", **own, "depends_on": (), "on_dependency_failure": "cancel",
         "workflow_id": "wf-id", "step_name": "first"},
        {"id": "2", **own, "depends_on": ("1",), "on_dependency_failure": "run",
         "workflow_id": "wf-id", "step_name": "second"},
    ]


def test_ordered_puts_every_node_after_those_it_waits_for() -> None:
    graph = {"d": ["b", "c"], "a": [], "b": ["a"], "c": ["a", "stored"], "e": ["stored"]}
    order = ordered(graph)
    assert sorted(order) == sorted(graph)
    for node, before in graph.items():
        assert all(order.index(p) < order.index(node) for p in before if p in graph)


def test_ordered_sorts_only_the_nodes_that_wait_for_waiting_ones_and_finds_their_cycles() -> None:
    fan_in = {str(i): [] for i in range(1000)} | {"fan": [str(i) for i in range(1000)]}
    assert ordered(fan_in)[-1] == "fan"
    with pytest.raises(CycleError) as caught:
        ordered({"root": [], "x": ["root", "y"], "y": ["x"]})
    assert set(caught.value.args[1]) == {"x", "y"}
