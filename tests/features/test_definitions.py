"""Job definitions stored by workers (``app.definitions``), on every backend under asyncio and
trio: what a worker stores at start, the deploy rule (first-seen wins; an old worker that restarts
does not take the name back), worker rows listing their job names, and rows written by hand that
are not definitions (skipped with a warning naming them; no worker fails)."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, datetime

import pytest

from soniq import Soniq
from soniq.errors import InvalidNameError
from soniq.testing import drain
from tests.helpers import on_connection, running_worker, wait_for

pytestmark = pytest.mark.anyio


async def work() -> None:
    return None


async def test_a_worker_stores_its_definitions_with_the_apps_defaults(app: Soniq) -> None:
    app.job(name="defs.plain")(work)
    app.job(name="defs.tuned", queue="mail", priority=5, retries=1, timeout=0, unique=True,
            retry_delay=[1, 2])(work)
    assert await app.definitions.list() == []
    assert await app.definitions.get("defs.plain") is None
    await drain(app)
    plain, tuned = await app.definitions.list()
    p, t = plain.definition, tuned.definition
    assert (p.name, p.queue, p.priority, p.max_attempts, p.timeout, p.encrypt) == (
        "defs.plain", "default", 100, 4, 300.0, False)
    assert (t.name, t.queue, t.priority, t.max_attempts, t.timeout) == (
        "defs.tuned", "mail", 5, 2, None)
    assert dict(t.options) == {"unique": True, "retry_backoff": False, "retry_delay": [1, 2],
                               "retry_max_delay": None}
    assert await app.definitions.get("defs.tuned") == tuned
    assert plain.first_seen_at.utcoffset() is not None
    with pytest.raises(InvalidNameError):
        await app.definitions.get("no spaces")


async def test_a_deploy_wins_and_an_old_worker_restarting_does_not_flip_it(app: Soniq) -> None:
    """Worker v1 registers A, worker v2 registers B (B current), v1 restarts (B still current):
    real workers, each storing what its registry holds when it starts."""
    app.job(name="defs.deployed", queue="v1")(work)  # definition A
    await drain(app)
    assert (await app.definitions.get("defs.deployed") or _none()).definition.queue == "v1"
    app.job(name="defs.deployed", queue="v2")(work)  # definition B: the deploy
    await drain(app)
    assert (await app.definitions.get("defs.deployed") or _none()).definition.queue == "v2"
    app.job(name="defs.deployed", queue="v1")(work)  # an old worker restarts
    await drain(app)
    assert (await app.definitions.get("defs.deployed") or _none()).definition.queue == "v2"
    assert [d.definition.queue for d in await app.definitions.list()] == ["v2"]
    old, new = await app.definitions.versions("defs.deployed")
    assert (old.definition.queue, new.definition.queue) == ("v1", "v2")
    assert old.last_seen_at > new.last_seen_at  # seen again, yet not current


async def test_a_running_workers_row_lists_its_job_names(app: Soniq) -> None:
    app.job(name="defs.b")(work)
    app.job(name="defs.a")(work)
    async with running_worker(app) as worker:
        workers = await app.backend.list_workers()
        assert [(w["id"], w["job_names"]) for w in workers] == [
            (worker.id, ["defs.a", "defs.b"])]
        await app.backend.unregister_worker(worker.id)  # the cleanup removed it: a beat re-creates
        rows = await wait_for(app.backend.list_workers, message="the worker row re-created")
        assert rows[0]["job_names"] == ["defs.a", "defs.b"]


async def test_a_row_that_is_not_a_definition_is_skipped_with_a_warning(
        app: Soniq, backend_name: str, database_url: str | None,
        caplog: pytest.LogCaptureFixture) -> None:
    await app.ensure_initialized()
    future = datetime(2099, 1, 1, tzinfo=UTC)  # would be current, were it a definition
    if backend_name == "memory":
        store = app.backend.definitions
        store.rows[("defs.kept", "bogus")] = {  # type: ignore[union-attr]
            "name": "defs.kept", "digest": "bogus", "queue": "", "priority": "high",
            "max_attempts": 0, "timeout": -1, "encrypt": "yes", "options": [1],
            "first_seen_at": future, "last_seen_at": "never"}
    elif backend_name == "sqlite":
        assert database_url is not None
        with sqlite3.connect(database_url) as conn:
            conn.execute("INSERT INTO soniq_job_definitions VALUES ("
                         "'defs.kept', 'bogus', 'q', 'high', 'x', 'y', 7, '{not json', "
                         "'2099-01-01T00:00:00Z', 'whenever')")
        conn.close()
    else:
        assert database_url is not None
        await on_connection(database_url, lambda conn: conn.execute(
            "INSERT INTO soniq_job_definitions (name, digest, queue, priority, max_attempts,"
            " timeout, options, first_seen_at, last_seen_at) VALUES ('defs.kept', 'bogus', '',"
            " 99999, 0, -1, $1::jsonb, $2, $2)", json.dumps([1, 2]), future))
    app.job(name="defs.kept", queue="real")(work)
    with caplog.at_level(logging.WARNING, logger="soniq.definitions"):
        await drain(app)  # the worker starts, stores its definition, and runs
        [kept] = await app.definitions.list()
        assert await app.definitions.get("defs.kept") == kept
    assert kept.definition.queue == "real"
    assert any("name='defs.kept' digest='bogus'" in r.getMessage() for r in caplog.records)


def _none() -> object:
    raise AssertionError("no definition stored")
