"""Who may change things through the dashboard, and the headers every response carries.

Writes (retry, cancel, delete, replay, pause/resume, run now) need one of:

- the API key (``SONIQ_DASHBOARD_API_KEY``), sent as ``Authorization: Bearer <key>`` or
  ``X-Soniq-Key: <key>`` -- headers a browser never adds by itself -- and compared in constant
  time; a wrong key is refused even from a loopback caller;
- a loopback caller: the peer address is loopback **and** the request carries no ``Forwarded``,
  ``X-Forwarded-*`` or ``X-Real-IP`` header, so a reverse proxy on the same host does not make
  every visitor local.

Cross-site writes are refused whatever the credentials (``Sec-Fetch-Site`` other than
``same-origin``/``none``, or an ``Origin`` that is not this host). Every write, allowed or
refused, goes to the audit log (the database's ``soniq_audit``, with the changes made through
the API and the CLI). Reads are open: bind to loopback (the default) or put the
dashboard behind your own authentication.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections import deque
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.response.base import ASGIResponse

from soniq.errors import DatabaseError
from soniq.features.queues import audit_logger, log_audit
from soniq.serialization import utc_now
from soniq.types import AuditEntry

if TYPE_CHECKING:
    from collections.abc import Iterable

    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from soniq.app import Soniq

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "AuditEntry",
    "AuditLog",
    "HostCheck",
    "WriteAccess",
    "allowed_host_names",
    "host_name",
    "is_loopback_host",
    "security_headers",
    "write_guard",
]

#: No inline script or style anywhere: the pages load one stylesheet and one script from /static.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

_PROXY_HEADERS = ("forwarded", "x-real-ip")
_SAFE_SITES = frozenset({"same-origin", "none"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: An allowed-host entry: a name or address, an IPv6 address in brackets or bare, a port.
_HOST_ENTRY = re.compile(r"[A-Za-z0-9._-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?|[0-9A-Fa-f:.]+")


def is_loopback_host(host: str | None) -> bool:
    """True for a loopback IP address (``127.0.0.0/8``, ``::1``, IPv4-mapped) or ``localhost``."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def host_name(value: str | None) -> str | None:
    """The host of a ``Host`` header or an allowed-host entry, without its port, lower case and
    without a trailing dot; an IP address in its canonical spelling (``[::1]`` and ``::1`` are
    ``::1``). None when empty or malformed."""
    text = (value or "").strip().lower()
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        text = inner
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    text = text.rstrip(".")
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None if ":" in text else text


def allowed_host_names(configured: Iterable[str] = ()) -> frozenset[str] | None:
    """The host names a dashboard answers to: ``localhost``, ``127.0.0.1``, ``::1`` and
    ``configured`` (names or addresses, a port is ignored); None (any host) when ``configured``
    holds ``*``. Other loopback addresses are always allowed too (see :meth:`HostCheck.allows`).
    Raises ValueError for an entry that is not a host name."""
    names = {"localhost", "127.0.0.1", "::1"}
    for entry in configured:
        if entry.strip() == "*":
            return None
        name = host_name(entry)
        if name is None or not _HOST_ENTRY.fullmatch(entry.strip()):
            raise ValueError(f"not a host name: {entry!r} (give a name such as "
                             "dash.example.com or an address, without scheme or path)")
        names.add(name)
    return frozenset(names)


class HostCheck:
    """ASGI wrapper that answers 400 to any HTTP request whose ``Host`` is not allowed, before
    routing (so no handler, page or static file is reached). ``allowed`` None: no check."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self._app = app
        self.allowed = allowed

    def allows(self, header: str | None) -> bool:
        if self.allowed is None:
            return True
        name = host_name(header)
        return name is not None and (name in self.allowed or is_loopback_host(name))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in (ScopeType.HTTP, ScopeType.WEBSOCKET):
            await self._app(scope, receive, send)
            return
        header = next((value.decode("latin-1") for name, value in scope["headers"]
                       if name == b"host"), None)
        if self.allows(header):
            await self._app(scope, receive, send)
        elif scope["type"] == ScopeType.WEBSOCKET:
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
        else:
            detail = (f"host {header!r} is not served here; allow it with soniq dashboard "
                      "--allowed-host NAME (allowed_hosts=[...] in create_dashboard_app)"
                      if header else "a Host header is required")
            response = ASGIResponse(
                body=json.dumps({"status_code": 400, "detail": detail}).encode(),
                status_code=400, media_type="application/json")
            await response(scope, receive, send)


class AuditLog:
    """Every dashboard write, recorded in the database (``backend.audit``: the same table the
    API and the CLI write their changes to, so this dashboard shows those of every process) and
    logged to ``soniq.audit`` at INFO (WARNING when refused). A backend without an
    audit store keeps the newest ``size`` entries in this process instead."""

    def __init__(self, app: Soniq, size: int = 1000) -> None:
        self._app = app
        self._kept: deque[AuditEntry] = deque(maxlen=size)

    async def record(self, *, actor: str, client: str | None, action: str,
                     targets: tuple[str, ...] | list[str], outcome: str,
                     detail: str | None = None) -> AuditEntry:
        entry = AuditEntry(at=utc_now(), actor=actor, client=client, action=action,
                           targets=tuple(targets), outcome=outcome, detail=detail)
        log_audit(entry)
        store = self._app.backend.audit
        if store is None:
            self._kept.append(entry)
            return entry
        try:
            await self._app.ensure_initialized()
            await store.record(entry)
        except DatabaseError as exc:  # the answer to the write must not depend on its record
            audit_logger.error("could not store the audit entry above: %s", exc)
        return entry

    async def entries(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""
        store = self._app.backend.audit
        if store is None:
            return list(reversed(self._kept))[:limit]
        await self._app.ensure_initialized()
        return await store.list(limit)


class WriteAccess:
    """The write rules of one dashboard: its API key (None: loopback callers only)."""

    def __init__(self, api_key: str | None) -> None:
        self._key = api_key.encode() if api_key else None

    def __repr__(self) -> str:
        return f"<WriteAccess key={'set' if self._key else 'unset'}>"

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def decide(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        """The actor (``api-key`` or ``loopback``) allowed to write, or raise 401/403."""
        headers = connection.headers
        method = connection.scope.get("method", "GET")
        if method not in _SAFE_METHODS:
            site = headers.get("sec-fetch-site")
            if site is not None and site not in _SAFE_SITES:
                raise PermissionDeniedException(f"cross-site write refused (Sec-Fetch-Site: {site})")
            origin = headers.get("origin")
            if origin is not None and origin != _own_origin(connection):
                raise PermissionDeniedException("cross-site write refused (Origin does not match)")
        given = _given_key(headers.get("authorization"), headers.get("x-soniq-key"))
        if given is not None:
            if self._key is not None and given and hmac.compare_digest(given.encode(), self._key):
                return "api-key"
            raise NotAuthorizedException("wrong API key", headers={"WWW-Authenticate": "Bearer"})
        if _is_local(connection):
            return "loopback"
        if self._key is None:
            raise PermissionDeniedException(
                "writes need SONIQ_DASHBOARD_API_KEY (none is set) or a loopback caller")
        raise NotAuthorizedException(
            "writes need the API key: send Authorization: Bearer <key> or X-Soniq-Key",
            headers={"WWW-Authenticate": "Bearer"})


def _given_key(authorization: str | None, soniq_key: str | None) -> str | None:
    """The key the caller sent; ``""`` (never right) for an ``Authorization`` of another scheme,
    so any credential that is not the key is refused rather than ignored."""
    if soniq_key is not None:
        return soniq_key
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    return None


def _own_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    scheme = connection.scope.get("scheme", "http")
    return f"{scheme}://{connection.headers.get('host', '')}"


def _is_local(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    client = connection.scope.get("client")
    if not client or not is_loopback_host(client[0]):
        return False
    return not any(name in _PROXY_HEADERS or name.startswith("x-forwarded-")
                   for name in connection.headers)


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    client = connection.scope.get("client")
    return None if not client else str(client[0])


async def write_guard(connection: ASGIConnection[Any, Any, Any, Any],
                      handler: BaseRouteHandler) -> None:
    """Litestar guard of every write route: decide, remember the actor, audit refusals."""
    state = connection.app.state
    access: WriteAccess = state["soniq_access"]
    audit: AuditLog = state["soniq_audit"]
    try:
        actor = access.decide(connection)
    except (NotAuthorizedException, PermissionDeniedException) as exc:
        await audit.record(actor="anonymous", client=client_address(connection),
                           action=str(handler.opt.get("action", handler.handler_name)),
                           targets=[str(v) for v in connection.path_params.values()],
                           outcome="denied", detail=str(exc.detail))
        raise
    connection.state["soniq_actor"] = actor


_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: CSP and friends on every response, errors and static files too."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        names = {name.lower() for name, _ in headers}
        headers.extend(h for h in _HEADERS if h[0] not in names)
        if b"cache-control" not in names:
            headers.append((b"cache-control", b"no-store"))
        message["headers"] = headers
