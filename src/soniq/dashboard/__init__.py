"""The Soniq dashboard: a Litestar app to watch and operate the queues.

``create_dashboard_app(app)`` returns a ``litestar.Litestar`` (serve it with any ASGI server, or
mount it under a path); ``soniq dashboard`` serves it with uvicorn. Writes need
``SONIQ_DASHBOARD_API_KEY`` or a loopback caller (see :mod:`soniq.dashboard.security`).
"""

from __future__ import annotations

from soniq.dashboard.server import API_KEY_ENV, create_dashboard_app

__all__ = ["API_KEY_ENV", "create_dashboard_app"]
