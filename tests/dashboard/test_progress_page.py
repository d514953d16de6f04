"""The job page shows a running job's progress and asks to be refreshed while the job runs (the
API's job record carries it too), on every backend."""

from __future__ import annotations

import threading
from functools import partial

import anyio
import pytest

from soniq import JobContext, Soniq
from tests.dashboard.conftest import Dashboard

pytestmark = pytest.mark.anyio


def test_the_job_page_shows_live_progress(serve: object) -> None:
    release = threading.Event()

    def prepare(app: Soniq) -> None:
        @app.job(name="tests.progress")
        async def progress(ctx: JobContext) -> None:
            await ctx.progress({"rows": 120, "of": 400})
            while not release.is_set():  # until the test has seen it
                await anyio.sleep(0.02)
            await ctx.progress(100)

    dashboard: Dashboard = serve(prepare=prepare)  # type: ignore[operator]
    job_id = dashboard.enqueue("tests.progress")
    worker = dashboard.portal.start_task_soon(partial(dashboard.app.run_worker, run_once=True))
    try:
        with dashboard.client() as http, anyio.from_thread.start_blocking_portal() as waiter:
            def shown() -> str | None:
                page = http.get(f"/jobs/{job_id}").text
                return page if "&#34;rows&#34;: 120" in page or '"rows": 120' in page else None

            async def wait_shown() -> str:
                with anyio.fail_after(20):
                    while (page := await anyio.to_thread.run_sync(shown)) is None:
                        await anyio.sleep(0.05)
                return page

            page = waiter.call(wait_shown)
            assert "data-refresh" in page  # the running job's page refreshes itself
            assert http.get(f"/api/jobs/{job_id}").json()["job"]["progress"] == {"rows": 120,
                                                                                 "of": 400}
            release.set()
            worker.result(timeout=30)
            done = http.get(f"/jobs/{job_id}").text
            assert 'value="100"' in done and "data-refresh" not in done
    finally:
        release.set()
