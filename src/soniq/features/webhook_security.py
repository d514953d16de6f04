"""What keeps webhooks safe: request signatures, endpoint secrets at rest, and the SSRF rules
with the DNS pinning that makes them hold at connect time. :mod:`soniq.features.webhooks` uses
these; receivers use :func:`verify_signature`.

Signatures follow Standard Webhooks: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.

Secrets at rest: with ``secret_keys`` configured, an endpoint's secrets JSON is stored as
``{"$enc": "<Fernet token>"}`` (the envelope of encrypted job payloads, made by
:class:`~soniq.features.signing.Signing` with the newest key). Without keys it is stored as given
(the secrets are needed to sign, so they cannot be hashed). Both forms are read, so rows written
before keys were configured keep working until they are re-encrypted (:func:`needs_reseal`).

SSRF: :func:`check_target` refuses literal non-public addresses (also IPv4-mapped IPv6 and
decimal/hex/octal IPv4 spellings) and ``localhost``; :func:`resolve_target` resolves a name once
and refuses the target when any answer is non-public; :func:`post_pinned` then connects to one of
exactly those checked addresses (the URL's host is replaced by the address; the ``Host`` header
and, for https, SNI and certificate verification keep the name). So a name that answers a public
address when checked and a private one when connected (DNS rebinding) never reaches the private
one: nothing resolves it a second time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets as secrets_module
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio

from soniq.errors import ConfigurationError, DecryptionError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import httpx

    from soniq.backends.stores import WebhookEndpoint, WebhookStore
    from soniq.features.signing import Signing
    from soniq.settings import SoniqSettings

__all__ = [
    "SECRET_PREFIX", "Address", "LazyCipher", "Resolver", "active_secrets", "check_target",
    "cipher_for", "needs_reseal", "new_secret", "open_secrets", "post_pinned", "reseal",
    "resolve_target", "seal_secrets", "sign", "system_resolver", "verify_signature",
]

SECRET_PREFIX = "whsec_"
#: The key of an encrypted value's envelope (as :data:`soniq.features.signing.ENVELOPE_KEY`,
#: which is not imported so that ``cryptography`` loads only when keys are configured).
_ENVELOPE = "$enc"

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``await resolver(host, port)`` -> the host's addresses (text), in the order to try them. The
#: default is :func:`system_resolver`; tests inject their own.
Resolver: TypeAlias = Callable[[str, int], Awaitable[Sequence[str]]]


# -- signatures ------------------------------------------------------------------------------
def _key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except ValueError:
            pass
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">``."""
    message = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes | str,
                     tolerance: float = 300, *, now: float | None = None) -> bool:
    """True when ``headers`` (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)
    carry a valid signature of ``body`` by ``secret`` and the timestamp is within ``tolerance``
    seconds of now. For receivers; header names are matched case-insensitively."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get("webhook-id"), lower.get("webhook-timestamp"),
                                 lower.get("webhook-signature"))
    if not msg_id or not stamp or not signatures:
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = sign(secret, msg_id, timestamp, raw)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split())


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets_module.token_bytes(32)).decode()


# -- secrets at rest -------------------------------------------------------------------------
def cipher_for(settings: SoniqSettings) -> Signing | None:
    """The :class:`Signing` of the configured ``secret_keys``, or None without keys."""
    if not settings.secret_keys:
        return None
    from soniq.features.signing import Signing  # cryptography loads only when keys are set

    return Signing(settings.secret_keys)


class LazyCipher:
    """:func:`cipher_for` the settings, built on first call (not at app construction)."""

    __slots__ = ("_settings", "_value")

    def __init__(self, settings: SoniqSettings) -> None:
        self._settings = settings
        self._value: Signing | None | _Unset = _UNSET

    def __call__(self) -> Signing | None:
        if isinstance(self._value, _Unset):
            self._value = cipher_for(self._settings)
        return self._value


class _Unset:
    pass


_UNSET = _Unset()


def _token(stored: str) -> str | None:
    value = json.loads(stored)
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_ENVELOPE), str):
        return str(value[_ENVELOPE])
    return None


def seal_secrets(secrets: list[dict[str, Any]], cipher: Signing | None) -> str:
    """The stored form of ``secrets``: encrypted with the newest key, or plain JSON without keys."""
    text = json.dumps(secrets)
    return text if cipher is None else json.dumps({_ENVELOPE: cipher.encrypt_now(text)})


def open_secrets(stored: str, cipher: Signing | None) -> list[dict[str, Any]]:
    """The secrets list of a stored value, encrypted (with any configured key) or plain.

    Raises:
        ConfigurationError: the value is encrypted and no keys are configured.
        DecryptionError: the value is encrypted with a key that is not configured, or altered.
    """
    token = _token(stored)
    if token is None:
        plain: list[dict[str, Any]] = json.loads(stored)
        return plain
    if cipher is None:
        raise ConfigurationError(
            "this webhook endpoint's secrets are encrypted at rest but no secret_keys are "
            "configured: set SONIQ_SECRET_KEYS to include the key they were encrypted with")
    try:
        opened: list[dict[str, Any]] = json.loads(cipher.decrypt_now(token))
    except DecryptionError:
        raise DecryptionError(
            "this webhook endpoint's secrets were encrypted with a key that is not in "
            "SONIQ_SECRET_KEYS (or were altered); keep old keys after the new one while "
            "rotating") from None
    return opened


def needs_reseal(stored: str, cipher: Signing | None) -> bool:
    """True when keys are configured and ``stored`` is plaintext or not under the newest key."""
    if cipher is None:
        return False
    token = _token(stored)
    return token is None or not cipher.is_current(token)


async def reseal(store: WebhookStore, endpoints: Sequence[WebhookEndpoint],
                 cipher: Signing | None) -> int:
    """Re-encrypt with the newest key every endpoint whose secrets are plaintext (written before
    keys were configured) or under an older key; how many were rewritten. Compare-and-set, so a
    rotation written meanwhile wins; secrets no configured key can read are left as they are
    (their deliveries fail with that reason)."""
    rewritten = 0
    for endpoint in endpoints:
        if not needs_reseal(endpoint.secrets, cipher):
            continue
        try:
            secrets = open_secrets(endpoint.secrets, cipher)
        except DecryptionError:
            continue
        if await store.set_secrets(endpoint.id, seal_secrets(secrets, cipher),
                                   expected=endpoint.secrets):
            rewritten += 1
    return rewritten


def active_secrets(secrets: list[dict[str, Any]], now: datetime) -> list[str]:
    """The secrets that still sign at ``now`` (not past their rotation grace)."""
    return [s["secret"] for s in secrets
            if s.get("expires_at") is None or datetime.fromisoformat(s["expires_at"]) > now]


# -- SSRF ------------------------------------------------------------------------------------
def _parse_ip(host: str) -> Address | None:
    """The address a host spells, including legacy decimal/hex/octal IPv4 forms; None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))  # 2130706433, 0x7f000001, 0177...
        except OSError:
            return None
    return None


def _is_public(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _split(url: str) -> tuple[httpx.URL, str, int]:
    """(parsed URL, host in ASCII/IDNA form without brackets, port). Parsed by httpx, the same
    parser that sends the request, so the checked host is the host connected to."""
    if not isinstance(url, str):
        raise ValidationError("a webhook url must be a string")
    import httpx  # here, not at the top: ``import soniq`` does not load httpx

    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise ValidationError(f"webhook url is malformed: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ValidationError(f"webhook url must be http or https, got scheme {parsed.scheme!r}")
    if not host:
        raise ValidationError("webhook url has no host")
    return parsed, host, parsed.port or (443 if parsed.scheme == "https" else 80)


def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse a URL whose scheme is not http(s), or whose host is a non-public address (or
    ``localhost``) unless ``allow_private``. Names are resolved, checked and pinned at send time
    (:func:`resolve_target`)."""
    _, host, _ = _split(url)
    if allow_private:
        return
    ip = _parse_ip(host)
    if ip is not None and not _is_public(ip):
        raise ValidationError(
            f"webhook target {host!r} is a private, loopback or link-local address ({ip}); pass "
            "allow_private=True (or set webhook_allow_private) to allow it")
    if ip is None and (host == "localhost" or host.endswith(".localhost")):
        raise ValidationError(f"webhook target {host!r} is loopback; pass allow_private=True")


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (``getaddrinfo``), in its order."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in infos]


async def resolve_target(url: str, *, allow_private: bool,
                         resolver: Resolver | None = None) -> list[Address]:
    """:func:`check_target`, then resolve the host once and return its addresses, refusing the
    target when any of them is not public (unless ``allow_private``). A literal address is
    returned as is. Connect only to what this returns (:func:`post_pinned`)."""
    check_target(url, allow_private=allow_private)
    _, host, port = _split(url)
    literal = _parse_ip(host)
    if literal is not None:
        return [literal]
    try:
        answers = await (resolver or system_resolver)(host, port)
    except OSError as exc:
        raise ValidationError(f"webhook host {host!r} does not resolve: {exc}") from None
    addresses: list[Address] = []
    for answer in answers:
        try:
            ip = ipaddress.ip_address(str(answer).split("%")[0])
        except ValueError:
            raise ValidationError(
                f"webhook host {host!r} resolved to {answer!r}, which is not an address") from None
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise ValidationError(f"webhook host {host!r} resolves to no address")
    if not allow_private:
        for ip in addresses:
            if not _is_public(ip):
                raise ValidationError(
                    f"webhook host {host!r} resolves to non-public address {ip}; refused")
    return addresses


async def post_pinned(client: httpx.AsyncClient, url: str, addresses: Sequence[Address], *,
                      content: bytes, headers: Mapping[str, str]) -> httpx.Response:
    """POST to ``url`` connected to ``addresses`` (from :func:`resolve_target`) and nothing else:
    the first, then the next only when connecting failed (so no request was sent). The ``Host``
    header is the URL's, and for https the name is used for SNI and certificate verification
    (httpx's ``sni_hostname`` extension). Use a client of its own (a pooled connection is keyed
    by the address, so it must not be shared with another host's requests)."""
    import httpx

    parsed, host, _ = _split(url)
    pinned_headers = {**headers, "host": parsed.netloc.decode("ascii")}
    extensions: dict[str, Any] = {}
    if parsed.scheme == "https" and _parse_ip(host) is None:
        extensions["sni_hostname"] = host
    if not addresses:
        raise ValidationError(f"webhook host {host!r} has no address to connect to")
    for index, ip in enumerate(addresses):
        try:
            return await client.post(parsed.copy_with(host=str(ip)), content=content,
                                     headers=pinned_headers, extensions=extensions)
        except httpx.ConnectError:
            if index == len(addresses) - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
