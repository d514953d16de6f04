"""A real dashboard server per test: uvicorn on a free port, in an event loop on a portal thread.

The Soniq app lives on that same loop, so the test enqueues jobs and runs workers through the
portal on the very instance the dashboard shows (the memory backend included). Readiness is
waited for with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from anyio.from_thread import BlockingPortal, start_blocking_portal

from soniq import Soniq
from soniq.dashboard import create_dashboard_app

#: Flip to make ``tests.flaky`` succeed (the end-to-end test replays it after it failed).
FLAKY = {"fail": True}


def register_jobs(app: Soniq) -> None:
    @app.job(name="tests.ok", queue="default")
    def ok(x: int = 0) -> dict[str, int]:
        return {"doubled": 2 * x}

    @app.job(name="tests.fail", queue="critical", retries=0)
    def fail(message: str = "boom") -> None:
        raise ValueError(message)

    @app.job(name="tests.flaky", queue="default", retries=0)
    def flaky() -> str:
        if FLAKY["fail"]:
            raise RuntimeError("flaky failed")
        return "fine"


@dataclass
class Dashboard:
    """A running dashboard and the Soniq app behind it."""

    url: str
    app: Soniq
    portal: BlockingPortal
    host: str

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``await fn(*args, **kwargs)`` on the server's event loop."""
        return self.portal.call(partial(fn, *args, **kwargs))

    def enqueue(self, target: str, **kwargs: Any) -> str:
        return str(self.call(self.app.enqueue, target, **kwargs))

    def run_jobs(self) -> int:
        """Run every due job once (a worker with run_once)."""
        return int(self.call(self.app.run_worker, run_once=True))

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("base_url", self.url)
        return httpx.Client(timeout=10, **kwargs)


def free_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


async def _wait_started(server: uvicorn.Server, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not server.started:
            await anyio.sleep(0.01)


def _make_app(database_url: str | None, backend_name: str) -> Soniq:
    app = Soniq(database_url=database_url,
                backend=backend_name if database_url is None else None,
                poll_interval=0.05, heartbeat_interval=0.1, heartbeat_timeout=2.0,
                capture_job_logs=True)
    register_jobs(app)
    return app


@pytest.fixture
def serve(backend_name: str, database_url: str | None) -> Iterator[Callable[..., Dashboard]]:
    """``serve(host="127.0.0.1", root_path="", prepare=None, **options)`` starts a dashboard
    (``prepare(app)`` runs first, e.g. to instrument the backend); stopped after."""
    stack: list[tuple[BlockingPortal, uvicorn.Server, Any, Soniq, Any]] = []

    def start(host: str = "127.0.0.1", root_path: str = "",
              prepare: Callable[[Soniq], None] | None = None, **options: Any) -> Dashboard:
        cm = start_blocking_portal("asyncio")
        portal = cm.__enter__()
        app = _make_app(database_url, backend_name)
        if prepare is not None:
            prepare(app)
        options.setdefault("api_key", "")
        options.setdefault("poll_interval", 0.2)
        options.setdefault("rollup_interval", 0.5)
        dashboard_app = create_dashboard_app(app, **options)
        sock = free_socket(host)
        config = uvicorn.Config(dashboard_app, lifespan="on", log_level="warning",
                                proxy_headers=False, root_path=root_path,
                                timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        future = portal.start_task_soon(server.serve, [sock])
        stack.append((portal, server, future, app, cm))
        portal.call(_wait_started, server)
        port = sock.getsockname()[1]
        return Dashboard(url=f"http://127.0.0.1:{port}{root_path}", app=app, portal=portal,
                         host=host)

    yield start
    for portal, server, future, app, cm in reversed(stack):
        server.should_exit = True
        future.result(timeout=30)
        portal.call(app.close)
        cm.__exit__(None, None, None)


@pytest.fixture
def dashboard(serve: Callable[..., Dashboard]) -> Dashboard:
    """A dashboard on 127.0.0.1 with no API key (loopback writes only)."""
    return serve()
