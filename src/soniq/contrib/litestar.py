"""Litestar: ``Litestar(plugins=[SoniqPlugin(jobs)])``.

::

    from litestar import Litestar, post
    from litestar.di import NamedDependency
    from soniq.contrib.litestar import SoniqPlugin

    jobs = Soniq(database_url="postgresql://localhost/myapp")

    @post("/signup")
    async def signup(email: str, soniq: NamedDependency[Soniq]) -> dict[str, str]:  # injected
        return {"job_id": await soniq.enqueue(send_welcome, email=email)}

    api = Litestar([signup], plugins=[SoniqPlugin(jobs, run_worker=True, dashboard_path="/jobs")])

The plugin:

- opens the Soniq app's pool at startup and closes it at shutdown (a lifespan entry);
- injects the app into handlers as the ``soniq`` dependency (``dependency_key`` to rename it);
- with ``run_worker=True`` runs a worker inside the lifespan's task group (``app.running_worker``):
  at shutdown it stops claiming and lets running jobs finish;
- with ``dashboard_path="/jobs"`` mounts the Soniq dashboard (:mod:`soniq.dashboard`) there.
  The dashboard enforces its own write rules (API key or loopback caller); put your own auth in
  front of the path if the rest of the app is public.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar.di import Provide
from litestar.handlers import asgi
from litestar.plugins import InitPluginProtocol

# Litestar reads the provider's return annotation at run time: ``Soniq`` must resolve.
from soniq.app import Soniq  # noqa: TC001

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from litestar import Litestar
    from litestar.config.app import AppConfig
    from litestar.types import Receive, Scope, Send

__all__ = ["SoniqPlugin"]


class SoniqPlugin(InitPluginProtocol):
    """Wire a :class:`~soniq.Soniq` into a Litestar application (see the module docstring).

    Args:
        soniq: the app to open, inject and (optionally) run a worker for.
        dependency_key: the handler parameter name the app is injected as.
        run_worker: run a worker in-process for the application's lifetime.
        worker_concurrency: the worker's concurrency (default: the ``concurrency`` setting).
        worker_queues: the worker's queues (default: every queue).
        dashboard_path: mount the dashboard under this path (default: not mounted).
        dashboard_options: keyword arguments for ``create_dashboard_app``.
    """

    def __init__(self, soniq: Soniq, *, dependency_key: str = "soniq", run_worker: bool = False,
                 worker_concurrency: int | None = None, worker_queues: Sequence[str] | None = None,
                 dashboard_path: str | None = None,
                 dashboard_options: Mapping[str, Any] | None = None) -> None:
        if dashboard_path is not None and not dashboard_path.startswith("/"):
            raise ValueError(f"dashboard_path must start with '/', got {dashboard_path!r}")
        self.soniq = soniq
        self.dependency_key = dependency_key
        self.run_worker = run_worker
        self.worker_concurrency = worker_concurrency
        self.worker_queues = worker_queues
        self.dashboard_path = dashboard_path
        self.dashboard_options = dict(dashboard_options or {})
        self._dashboard: Litestar | None = None

    def __repr__(self) -> str:
        return (f"<SoniqPlugin {self.soniq!r} worker={self.run_worker} "
                f"dashboard={self.dashboard_path}>")

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.dependencies[self.dependency_key] = Provide(self._provide, sync_to_thread=False)
        app_config.lifespan.append(self._lifespan)
        if self.dashboard_path is not None:
            app_config.route_handlers.append(self._dashboard_mount(self.dashboard_path))
        return app_config

    def _provide(self) -> Soniq:
        return self.soniq

    @asynccontextmanager
    async def _lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.soniq)
            if self._dashboard is not None:  # a mounted app gets no lifespan events of its own
                await stack.enter_async_context(self._dashboard.lifespan())
            if self.run_worker:
                await stack.enter_async_context(self.soniq.running_worker(
                    concurrency=self.worker_concurrency, queues=self.worker_queues))
            yield

    def _dashboard_mount(self, path: str) -> Any:
        # Imported here: the dashboard is only loaded by applications that mount it.
        from soniq.dashboard import (  # type: ignore[attr-defined,unused-ignore]
            create_dashboard_app,
        )

        options = {"root_path": path.rstrip("/"), **self.dashboard_options}
        dashboard = self._dashboard = create_dashboard_app(self.soniq, **options)

        async def mounted(scope: Scope, receive: Receive, send: Send) -> None:
            await dashboard(scope, receive, send)

        return asgi(path.rstrip("/") or "/", is_mount=True, copy_scope=True)(mounted)
