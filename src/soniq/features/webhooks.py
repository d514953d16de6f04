"""Webhooks: ``app.webhooks`` (register, list, get, unregister, rotate_secret, deliveries), the
management API. The :class:`WebhookService` every worker runs -- recording events, sending and
pruning deliveries -- is in :mod:`soniq.features.webhook_delivery` (re-exported here).

Endpoints live in storage (:class:`~soniq.backends.stores.WebhookStore`, ``backend.webhooks``), so
an endpoint registered by any process is used by every worker sharing the database: each worker's
service reloads the endpoint list every ``webhook_reload_interval`` seconds (one small query; with
no endpoints nothing else happens).

Secrets are returned once by ``register``/``rotate_secret`` and never appear in reprs, logs or
errors. With ``secret_keys`` configured they are stored encrypted (Fernet, newest key); rows
written before keys were configured, or under an older key, are re-encrypted by the next worker
that reloads the endpoint list. Without keys they are stored in plaintext (they are needed to sign).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from soniq.backends.stores import WebhookDelivery, WebhookEndpoint, WebhookStore
from soniq.errors import DatabaseError, ValidationError
from soniq.features.webhook_delivery import EVENTS, WebhookService, webhook_store
from soniq.features.webhook_security import (
    SECRET_PREFIX,
    LazyCipher,
    Resolver,
    check_target,
    new_secret,
    open_secrets,
    resolve_target,
    seal_secrets,
    sign,
    verify_signature,
)
from soniq.ids import is_uuid, new_id
from soniq.serialization import utc_now

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable

    from soniq.backends.base import StorageBackend
    from soniq.settings import SoniqSettings

__all__ = ["EVENTS", "SECRET_PREFIX", "Resolver", "WebhookService", "Webhooks", "check_target",
           "resolve_target", "sign", "verify_signature"]

STATUSES = ("pending", "delivered", "failed")
#: Compare-and-set attempts of ``rotate_secret`` when another writer changes the same endpoint.
_ROTATE_ATTEMPTS = 5


def _public(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {"id": endpoint.id, "url": endpoint.url,
            "events": None if endpoint.events is None else list(endpoint.events),
            "allow_private": endpoint.allow_private, "active": endpoint.active,
            "description": endpoint.description, "created_at": endpoint.created_at}


def _delivery(d: WebhookDelivery) -> dict[str, Any]:
    return {"id": d.id, "endpoint_id": d.endpoint_id, "event": d.event, "payload": d.payload,
            "status": d.status, "attempts": d.attempts, "next_attempt_at": d.next_attempt_at,
            "last_status_code": d.last_status_code, "last_error": d.last_error,
            "created_at": d.created_at, "delivered_at": d.delivered_at}


class Webhooks:
    """``app.webhooks``: manage endpoints and read deliveries. Each call initialises the app."""

    def __init__(self, backend: StorageBackend, *, ready: Callable[[], Awaitable[None]],
                 settings: SoniqSettings) -> None:
        self._backend = backend
        self._ready = ready
        self._settings = settings
        self._cipher = LazyCipher(settings)

    def __repr__(self) -> str:
        return f"<Webhooks backend={self._backend.name}>"

    async def _store(self) -> WebhookStore:
        store = webhook_store(self._backend)
        await self._ready()
        return store

    async def register(self, url: str, *, events: builtins.list[str] | None = None,
                       secret: str | None = None, allow_private: bool = False,
                       description: str | None = None) -> dict[str, Any]:
        """Add an endpoint for ``events`` (None: all of :data:`EVENTS`). Returns the endpoint
        with its ``secret`` -- the only time the secret is shown."""
        allow = allow_private or self._settings.webhook_allow_private
        check_target(url, allow_private=allow)
        chosen: tuple[str, ...] | None = None
        if events is not None:
            if isinstance(events, str) or not events:
                raise ValidationError("events must be a non-empty list of event names, or None")
            unknown = [e for e in events if e not in EVENTS]
            if unknown:
                raise ValidationError(
                    f"unknown webhook events {unknown}; use any of {', '.join(EVENTS)}")
            chosen = tuple(dict.fromkeys(events))
        if secret is None:
            secret = new_secret()
        elif not isinstance(secret, str) or len(secret) < 16:
            raise ValidationError("a webhook secret must be a string of at least 16 characters")
        endpoint = WebhookEndpoint(
            id=new_id(), url=url, events=chosen,
            secrets=seal_secrets([{"secret": secret, "expires_at": None}], self._cipher()),
            allow_private=allow_private, active=True, description=description,
            created_at=utc_now())
        await (await self._store()).add_endpoint(endpoint)
        return {**_public(endpoint), "secret": secret}

    async def list(self) -> builtins.list[dict[str, Any]]:
        """Every endpoint (without secrets), oldest first."""
        return [_public(e) for e in await (await self._store()).list_endpoints()]

    async def get(self, endpoint_id: str) -> dict[str, Any] | None:
        if not is_uuid(endpoint_id):
            return None
        endpoint = await (await self._store()).get_endpoint(endpoint_id)
        return None if endpoint is None else _public(endpoint)

    async def unregister(self, endpoint_id: str) -> bool:
        """Remove the endpoint and its deliveries; True when it existed."""
        if not is_uuid(endpoint_id):
            return False
        return await (await self._store()).delete_endpoint(endpoint_id)

    async def rotate_secret(self, endpoint_id: str, *, grace: float = 86_400,
                            secret: str | None = None) -> str | None:
        """Add a new secret (returned once); current ones keep signing for ``grace`` seconds,
        so receivers can switch over. None when there is no such endpoint.

        Raises:
            ConfigurationError: the stored secrets are encrypted and no ``secret_keys`` are set.
            DecryptionError: they are encrypted with a key that is no longer configured.
        """
        if not is_uuid(endpoint_id):
            return None
        new = secret if secret is not None else new_secret()
        if not isinstance(new, str) or len(new) < 16:
            raise ValidationError("a webhook secret must be a string of at least 16 characters")
        store = await self._store()
        cipher = self._cipher()
        for _ in range(_ROTATE_ATTEMPTS):
            endpoint = await store.get_endpoint(endpoint_id)
            if endpoint is None:
                return None
            now = utc_now()
            cutoff = (now + timedelta(seconds=grace)).isoformat()
            kept = [{"secret": s["secret"], "expires_at": min(s["expires_at"] or cutoff, cutoff)}
                    for s in open_secrets(endpoint.secrets, cipher)
                    if s.get("expires_at") is None
                    or datetime.fromisoformat(s["expires_at"]) > now]
            sealed = seal_secrets([{"secret": new, "expires_at": None}, *kept], cipher)
            if await store.set_secrets(endpoint_id, sealed, expected=endpoint.secrets):
                return new
        raise DatabaseError(f"could not rotate the secret of webhook endpoint {endpoint_id}: "
                            "its secrets kept changing concurrently; try again")

    async def deliveries(self, endpoint_id: str | None = None, status: str | None = None,
                         limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Delivery rows, newest first, with each one's attempts and last status/error."""
        if status is not None and status not in STATUSES:
            raise ValidationError(f"unknown delivery status {status!r}; use one of {STATUSES}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValidationError(f"limit must be an integer >= 1, got {limit!r}")
        if endpoint_id is not None and not is_uuid(endpoint_id):
            return []
        rows = await (await self._store()).list_deliveries(
            endpoint_id=endpoint_id, status=status, limit=limit)
        return [_delivery(d) for d in rows]
