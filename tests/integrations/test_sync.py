"""``app.sync``: the blocking facade for Flask/Django views, scripts and threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from soniq import EnqueueOptions, Soniq
from soniq.errors import (
    AppClosedError,
    JobArgumentsError,
    SerializationError,
    UnknownJobError,
    UnsupportedOperationError,
    ValidationError,
)
from soniq.testing import drain, wait_for_status

FAST = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "heartbeat_timeout": 2.0}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def sync_app(request: pytest.FixtureRequest) -> Soniq:
    if request.param == "memory":
        app = Soniq(backend="memory", **FAST)
    elif request.param == "sqlite":
        app = Soniq(database_url=request.getfixturevalue("sqlite_url"), **FAST)
    else:
        request.applymarker(pytest.mark.postgres)
        app = Soniq(database_url=request.getfixturevalue("pg_url"), **FAST)

    @app.job(name="square", queue="math")
    def square(n: int) -> int:
        return n * n

    return app


def test_enqueue_from_many_threads_then_run_them(sync_app: Soniq) -> None:
    app = sync_app
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda n: app.sync.enqueue("square", n=n), range(40)))
    assert len(set(ids)) == 40
    assert app.sync.enqueue_many("square", [{"n": 100}, {"n": 101}]) != []
    [stats] = app.sync.get_queue_stats()
    assert stats["queue"] == "math" and stats["queued"] == 42
    assert len(app.sync.list_jobs(queue="math", status="queued", limit=500)) == 42
    record = app.sync.get_job(ids[3])
    assert record is not None and record["args"] == {"n": 3}

    async def run_all() -> list[int]:
        async with app:
            ran = await drain(app, concurrency=4)
            return sorted(r["result"] for r in ran)

    # On memory the facade shares the app's store; with a pool it has its own connections.
    results = anyio.run(run_all)
    assert results == sorted([n * n for n in range(40)] + [100 * 100, 101 * 101])
    assert app.is_closed and "closed" in repr(app.sync)  # closing the app closed the facade
    with pytest.raises(AppClosedError):
        app.sync.get_job(ids[0])


def test_results_cancel_delete_and_errors(sync_app: Soniq) -> None:
    app = sync_app
    with app.sync as jobs:
        done = jobs.enqueue("square", n=7)
        waiting = jobs.enqueue("square", n=8)
        later = jobs.schedule("square", 3600, n=9)

        async def run_one() -> None:
            async with app:
                await drain(app)

        assert jobs.cancel_job(later) is True
        assert jobs.delete_job(waiting) is True
        anyio.run(run_one)  # a worker on its own loop, as in another process
    # The facade is closed; the app too (its async with ended): open a fresh one to read back.
    reader = Soniq(database_url=app.settings.database_url, **FAST) if \
        app.backend.name != "memory" else None
    if reader is not None:
        with reader.sync:
            assert reader.sync.get_result(done) == 49
            assert reader.sync.get_job(later)["status"] == "cancelled"
            assert reader.sync.get_job(waiting) is None
            assert reader.sync.get_job("not-a-uuid") is None
            assert reader.sync.cancel_job("nope") is False
            assert reader.sync.delete_job("nope") is False


def test_validation_happens_in_the_calling_thread(sync_app: Soniq) -> None:
    with sync_app.sync as jobs:
        with pytest.raises(UnknownJobError):
            jobs.enqueue("cube", n=1)
        with pytest.raises(SerializationError):
            jobs.enqueue("square", n=object())
        with pytest.raises(JobArgumentsError):
            jobs.enqueue_many("square", {"n": 1})  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="unknown status"):
            jobs.list_jobs(status="finished")
        with pytest.raises(ValidationError, match="schedule"):
            jobs.schedule("square", None, n=1)  # type: ignore[arg-type]
        assert jobs.list_jobs() == []  # nothing was written
    jobs.close()  # twice is harmless


def test_sync_enqueue_takes_the_calls_uniqueness(sync_app: Soniq) -> None:
    options = EnqueueOptions(unique_by=["n"], unique_for=3600)
    with sync_app.sync as jobs:
        first = jobs.enqueue("square", n=1, options=options)
        assert jobs.enqueue("square", n=1, options=options) == first
        assert jobs.enqueue_many("square", [{"n": 1}, {"n": 2}], options=options)[0] == first
        assert len(jobs.list_jobs()) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("backend_name", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_sync_callers_beside_a_worker_on_the_apps_own_loop(app: Soniq) -> None:
    """A sync view (in a thread) enqueues while the app runs a worker on asyncio or trio: the
    facade's loop and pool never touch the app's."""

    @app.job(name="greet")
    def greet(name: str) -> str:
        assert threading.current_thread() is not threading.main_thread()
        return f"hello {name}"

    async with app.running_worker():
        ids = [await anyio.to_thread.run_sync(lambda n=n: app.sync.enqueue("greet", name=n))
               for n in ("ada", "bob")]
        for job_id in ids:
            await wait_for_status(app, job_id, "done")
        assert [await app.get_result(i) for i in ids] == ["hello ada", "hello bob"]
        assert await anyio.to_thread.run_sync(app.sync.get_result, ids[0]) == "hello ada"


@pytest.mark.anyio
async def test_calling_the_blocking_facade_from_async_code_is_refused(tmp_path: Path) -> None:
    app = Soniq(database_url=str(tmp_path / "jobs.db"))
    with pytest.raises(UnsupportedOperationError, match=r"await app.enqueue"):
        app.sync.get_queue_stats()
    assert await anyio.to_thread.run_sync(app.sync.get_queue_stats) == []  # from a thread: fine
    await app.close()
    assert "closed" in repr(app.sync)


def test_sync_callers_example_runs(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "sync_callers.py"
    env = {**os.environ, "SONIQ_DATABASE_URL": str(tmp_path / "jobs.db")}
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["enqueued 8 jobs; 8 waiting", "photo0_64px.png",
                                        "photo1_64px.png", "photo2_64px.png"]
