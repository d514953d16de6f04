"""``create_dashboard_app(app)``: the dashboard as a ``litestar.Litestar`` application.

Serve it with any ASGI server (``soniq dashboard`` uses uvicorn), or mount it in your own
Litestar app under a path::

    dashboard = create_dashboard_app(app, root_path="/jobs", allowed_hosts=["jobs.example.com"])

    @asgi("/jobs", is_mount=True, copy_scope=True)
    async def jobs_dashboard(scope, receive, send):
        await dashboard(scope, receive, send)

    # A mounted app gets no lifespan events: run the dashboard's in yours.
    Litestar([jobs_dashboard, ...], lifespan=[lambda _: dashboard.lifespan()])

Its lifespan opens the Soniq app's storage and runs the :class:`~soniq.dashboard.live.LiveHub`
(change feed and chart rollups); it closes the Soniq app on shutdown only when ``close_app``.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from soniq import __version__
from soniq.dashboard.api import api_router
from soniq.dashboard.live import LiveHub
from soniq.dashboard.pages import NAV, page_router, template_environment
from soniq.dashboard.security import (
    AuditLog,
    HostCheck,
    WriteAccess,
    allowed_host_names,
    security_headers,
)
from soniq.dashboard.service import EXACT_COUNTS_UP_TO, SEARCH_SCAN_LIMIT, DashboardService
from soniq.errors import (
    ConfigurationError,
    DatabaseError,
    SoniqError,
    UnsupportedOperationError,
    ValidationError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from soniq.app import Soniq

__all__ = ["API_KEY_ENV", "create_dashboard_app"]

#: The environment variable holding the write API key.
API_KEY_ENV = "SONIQ_DASHBOARD_API_KEY"

_STATIC = Path(__file__).parent / "static"


def create_dashboard_app(app: Soniq, *, api_key: str | None = None, root_path: str = "",
                         allowed_hosts: Iterable[str] = (), poll_interval: float = 2.0,
                         rollup_interval: float = 30.0, close_app: bool = False,
                         search_scan_limit: int = SEARCH_SCAN_LIMIT,
                         exact_counts_up_to: int = EXACT_COUNTS_UP_TO,
                         debug: bool = False) -> Litestar:
    """The dashboard of ``app`` as a Litestar application.

    Args:
        app: the Soniq instance whose storage the dashboard shows.
        api_key: the key writes need from non-loopback callers; default
            ``SONIQ_DASHBOARD_API_KEY``. Without one, only loopback callers can write.
        allowed_hosts: the host names (or addresses) clients reach the dashboard by, besides
            ``localhost`` and loopback addresses, which are always served; a request whose
            ``Host`` is anything else gets a 400 before routing (DNS rebinding defence).
            ``["*"]`` turns the check off: only when something in front checks the host.
        root_path: the path the dashboard is mounted under, for its links (a server's ASGI
            ``root_path``, e.g. uvicorn ``--root-path``, is used when this is empty).
        poll_interval: seconds between reads of the queue counts that feed live updates (made
            only while a browser listens).
        rollup_interval: seconds between rollups of finished jobs for the charts.
        close_app: close ``app`` when the dashboard shuts down (what ``soniq dashboard`` does).
        search_scan_limit: the most jobs one job-list page examines (newest first); a page that
            does not fill within them says so and continues past them.
        exact_counts_up_to: PostgreSQL queue counts are exact up to about this many rows in the
            jobs table, and partly estimated above (flagged ``estimated``).
    """
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    try:
        hosts = allowed_host_names(allowed_hosts)
    except ValueError as exc:
        raise ConfigurationError(f"allowed_hosts: {exc}") from None
    access = WriteAccess(key)
    audit = AuditLog(app)
    hub = LiveHub(app, interval=poll_interval, rollup_interval=rollup_interval,
                  exact_counts_up_to=exact_counts_up_to)
    service = DashboardService(app, access=access, audit=audit, hub=hub,
                               search_scan_limit=search_scan_limit)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(hub.run)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if close_app:
                await app.close()

    def provide_service() -> DashboardService:
        return service

    web = Litestar(
        route_handlers=[
            api_router, page_router,
            create_static_files_router(path="/static", directories=[_STATIC],
                                       name="soniq_static"),
        ],
        dependencies={"dash": Provide(provide_service, sync_to_thread=False)},
        state=State({"soniq_access": access, "soniq_audit": audit,
                     "soniq_root": root_path.rstrip("/")}),
        lifespan=[lifespan],
        before_send=[security_headers],
        exception_handlers={SoniqError: _soniq_error, HTTPException: _http_error},
        template_config=TemplateConfig(
            instance=JinjaTemplateEngine.from_environment(template_environment())),
        openapi_config=OpenAPIConfig(title="Soniq dashboard", version=__version__,
                                     path="/api/schema", render_plugins=[JsonRenderPlugin()]),
        logging_config=None,  # the host application owns logging (and job-log capture hooks root)
        debug=debug,
    )
    # Outside the router, so a refused host reaches no route (Litestar's own allowed-hosts
    # middleware runs per route and compares the port too). Inside Litestar's send wrapper, so
    # the refusal carries the security headers.
    web.asgi_handler = HostCheck(web.asgi_handler, hosts)
    return web


def _soniq_error(request: Request[Any, Any, Any], exc: SoniqError) -> Response[Any]:
    if isinstance(exc, ValidationError):
        status = 400
    elif isinstance(exc, UnsupportedOperationError):
        status = 501
    elif isinstance(exc, DatabaseError):
        status = 503
    else:
        status = 500
    return _error(request, status, exc.message)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return _error(request, exc.status_code, str(exc.detail), headers=exc.headers)


def _error(request: Request[Any, Any, Any], status: int, message: str,
           headers: dict[str, str] | None = None) -> Response[Any]:
    if "/api/" in request.url.path or request.url.path.endswith("/api"):
        return Response({"status_code": status, "detail": message}, status_code=status,
                        headers=headers)
    root = request.app.state["soniq_root"] or request.scope.get("root_path", "") or ""
    return Template(template_name="error.html", status_code=status, headers=headers,
                    context={"root": root.rstrip("/"), "page": "", "nav": NAV,
                             "status": status, "message": message, "has_key": False})
