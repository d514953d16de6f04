"""``soniq dashboard``: serve the web dashboard with uvicorn."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import anyio
from cyclopts import Parameter

from soniq.app import Soniq
from soniq.cli._common import Target, UsageError, configure_logging, open_app
from soniq.dashboard import API_KEY_ENV, create_dashboard_app
from soniq.dashboard.security import allowed_host_names, is_loopback_host


def dashboard(
    app_path: Annotated[str | None, Parameter(name="APP", env_var="SONIQ_APP")] = None,
    /,
    *,
    app: Annotated[str | None, Parameter(help="Same as APP.")] = None,
    host: str = "127.0.0.1",
    port: int = 6161,
    allowed_host: Annotated[tuple[str, ...], Parameter(negative=(), consume_multiple=False)] = (),
    root_path: str = "",
    database_url: str | None = None,
) -> int:
    """Serve the dashboard: queues, jobs, dead letter, workers, schedules, webhooks, health.

    Changes (retry, cancel, delete, replay, pause/resume, run now) need the API key in
    SONIQ_DASHBOARD_API_KEY (sent as Authorization: Bearer <key> or X-Soniq-Key), or a
    loopback caller that came through no proxy. Binding a non-loopback address without a key
    is refused.

    Only requests addressed to localhost, a loopback address, the bind address or an
    --allowed-host name are answered (any other Host header gets a 400: a web page cannot
    reach the dashboard through a name of its own that resolves here, DNS rebinding).

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute. Without it (and without SONIQ_APP) the
        dashboard opens --database-url / SONIQ_DATABASE_URL directly.
    host
        Address to bind; anything but loopback needs SONIQ_DASHBOARD_API_KEY.
    port
        Port to listen on.
    allowed_host
        A host name (or address) clients use to reach the dashboard, e.g. dash.example.com;
        repeat for several. localhost, loopback addresses and --host are always allowed.
        Needed with --host 0.0.0.0 (or ::) for any name other than localhost. '*' allows any
        Host: only behind a proxy that checks it.
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
    try:
        allowed_host_names(allowed_host)
    except ValueError as exc:
        raise UsageError(f"--allowed-host: {exc}") from None
    if root_path and not root_path.startswith("/"):
        raise UsageError(f"--root-path must start with '/', got {root_path!r}")
    import uvicorn  # the server loads only for this command

    soniq = open_app(Target(database_url=database_url), app_path=app_path or app)
    configure_logging(soniq.settings.log_level if not soniq.settings.debug else "DEBUG")
    if soniq.backend.name == "postgres":
        anyio.run(_check_database, soniq.settings.database_url)
    web = create_dashboard_app(soniq, api_key=key, close_app=True,
                               allowed_hosts=[*allowed_host, host])
    shown = f"[{host}]" if ":" in host else host
    print(f"Soniq dashboard at http://{shown}:{port}{root_path.rstrip('/')}/ "
          f"({soniq.backend.name}; writes: {'API key or loopback' if key else 'loopback only'})",
          flush=True)
    if _is_wildcard(host) and not allowed_host:
        print(f"Note: only Host names localhost and loopback addresses are answered; add "
              f"--allowed-host NAME for each name clients use to reach {host}", flush=True)
    uvicorn.run(web, host=host, port=port, root_path=root_path.rstrip("/"), proxy_headers=False,
                log_level="info", timeout_graceful_shutdown=5)
    return 0


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


async def _check_database(url: str) -> None:
    """Fail before serving, with one line, when the database is unreachable or not set up (the
    dashboard's own pool opens later, on the server's event loop)."""
    probe = Soniq(database_url=url)
    try:
        await probe.ensure_initialized()
    finally:
        await probe.close()
