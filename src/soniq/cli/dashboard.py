"""``soniq dashboard``: serve the web dashboard with uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

import anyio
from cyclopts import Parameter

from soniq.app import Soniq
from soniq.cli._common import Target, UsageError, configure_logging, open_app
from soniq.dashboard import API_KEY_ENV, create_dashboard_app
from soniq.dashboard.security import is_loopback_host


def dashboard(
    app_path: Annotated[str | None, Parameter(name="APP", env_var="SONIQ_APP")] = None,
    /,
    *,
    app: Annotated[str | None, Parameter(help="Same as APP.")] = None,
    host: str = "127.0.0.1",
    port: int = 6161,
    root_path: str = "",
    database_url: str | None = None,
) -> int:
    """Serve the dashboard: queues, jobs, dead letter, workers, schedules, webhooks, health.

    Changes (retry, cancel, delete, replay, pause/resume, run now) need the API key in
    SONIQ_DASHBOARD_API_KEY (sent as Authorization: Bearer <key> or X-Soniq-Key), or a
    loopback caller that came through no proxy. Binding a non-loopback address without a key
    is refused.

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute. Without it (and without SONIQ_APP) the
        dashboard opens --database-url / SONIQ_DATABASE_URL directly.
    host
        Address to bind; anything but loopback needs SONIQ_DASHBOARD_API_KEY.
    port
        Port to listen on.
    root_path
        The path prefix when served behind a reverse proxy under a sub-path, e.g. /soniq.
    database_url
        Where jobs are stored. Default: SONIQ_DATABASE_URL.
    """
    key = os.environ.get(API_KEY_ENV) or None
    if not is_loopback_host(host) and key is None:
        raise UsageError(
            f"refusing to serve the dashboard on {host} without an API key: anyone who can reach "
            f"it could retry, cancel and delete jobs. Set {API_KEY_ENV}, or bind 127.0.0.1 "
            "(the default) and reach it through an SSH tunnel or an authenticating proxy"
        )
    if root_path and not root_path.startswith("/"):
        raise UsageError(f"--root-path must start with '/', got {root_path!r}")
    import uvicorn  # the server loads only for this command

    soniq = open_app(Target(database_url=database_url), app_path=app_path or app)
    configure_logging(soniq.settings.log_level if not soniq.settings.debug else "DEBUG")
    if soniq.backend.name == "postgres":
        anyio.run(_check_database, soniq.settings.database_url)
    web = create_dashboard_app(soniq, api_key=key, close_app=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"Soniq dashboard at http://{shown}:{port}{root_path.rstrip('/')}/ "
          f"({soniq.backend.name}; writes: {'API key or loopback' if key else 'loopback only'})",
          flush=True)
    uvicorn.run(web, host=host, port=port, root_path=root_path.rstrip("/"), proxy_headers=False,
                log_level="info", timeout_graceful_shutdown=5)
    return 0


async def _check_database(url: str) -> None:
    """Fail before serving, with one line, when the database is unreachable or not set up (the
    dashboard's own pool opens later, on the server's event loop)."""
    probe = Soniq(database_url=url)
    try:
        await probe.ensure_initialized()
    finally:
        await probe.close()
