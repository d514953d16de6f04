"""Where asyncpg's exceptions become :mod:`soniq.errors`, and where DSNs lose their passwords.

The one place the PostgreSQL adapter translates driver errors (DESIGN.md §3): every call into
asyncpg runs inside :class:`Translator`, which re-raises with ``raise ... from exc``. Messages
show the database URL only through :func:`redact_url` and are scrubbed of the password, so a
secret never reaches a log, a repr or an error (DESIGN.md §8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg

from soniq.errors import (
    ConfigurationError,
    DatabaseError,
    DataRejectedError,
    SchemaMissingError,
    SoniqError,
)
from soniq.settings import SECRET_URL_PARAMS, redact_url

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["SETUP_HINT", "Translator", "redact_url", "translate"]

SETUP_HINT = "run `soniq setup` (or `await app.setup()` in your deploy step) to create it"

# Failures to reach or log in to the server: the fix is the URL, the network or the server.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, unreachable, DNS (TimeoutError is an OSError too)
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidAuthorizationSpecificationError,  # unknown role, bad password
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)

# SQLSTATE classes of a value the server can never store: data exception (too long, not
# representable in the database's encoding, bad syntax), integrity constraint violation, program
# limit exceeded (a jsonb over 256 MB). The same statement fails the same way every time.
_REJECTED_CLASSES = ("22", "23", "54")


def _secrets(url: str) -> list[str]:
    """Every spelling of the URL's secrets that a message could contain."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in SECRET_URL_PARAMS and v]
    except ValueError:
        pass
    return sorted({s for s in found if s}, key=len, reverse=True)


def _scrub(text: str, url: str) -> str:
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def translate(exc: BaseException, url: str, *, connecting: bool = False) -> SoniqError | None:
    """The Soniq error for a driver exception, or None when ``exc`` is not the driver's
    (Soniq's own errors, cancellation and bugs pass through unchanged).

    ``connecting`` marks code that only opens connections, where asyncpg reports a malformed
    URL as a plain ``ValueError``.
    """
    if isinstance(exc, SoniqError) or not isinstance(exc, Exception):
        return None
    where = redact_url(url)
    reason = _scrub(f"{type(exc).__name__}: {exc}", url)
    if isinstance(exc, asyncpg.UndefinedTableError):
        return SchemaMissingError(f"the Soniq tables are missing in {where} ({reason}); {SETUP_HINT}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return SchemaMissingError(f"the database in {where} does not exist; {SETUP_HINT}")
    if isinstance(exc, _CONNECTION_ERRORS):
        return DatabaseError(
            f"cannot connect to PostgreSQL at {where}: {reason}. Check database_url and that "
            "the server is running and accepts this user."
        )
    if isinstance(exc, asyncpg.ClientConfigurationError) or (
        connecting and isinstance(exc, ValueError)
    ):
        return ConfigurationError(f"invalid PostgreSQL database_url {where}: {reason}")
    if isinstance(exc, asyncpg.exceptions.DataError) or (  # DataError: asyncpg refused a value
        isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "")[:2] in _REJECTED_CLASSES
    ):
        return DataRejectedError(f"PostgreSQL refused a value at {where}: {reason}")
    # InternalClientError: a connection the server dropped while it sat idle (its protocol is
    # still consuming the server's error); the pool replaces it after this one failure.
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError
                  | asyncpg.exceptions.InternalClientError):
        return DatabaseError(f"PostgreSQL error at {where}: {reason}")
    return None


class Translator:
    """``with translator:`` turns driver exceptions raised inside into Soniq errors.

    A plain class rather than ``@contextmanager``: it wraps every call on the hot path, and one
    shared, stateless instance costs no generator per use.
    """

    __slots__ = ("_connecting", "_url")

    def __init__(self, url: str, *, connecting: bool = False) -> None:
        self._url = url
        self._connecting = connecting

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            return
        translated = translate(exc, self._url, connecting=self._connecting)
        if translated is not None:
            raise translated from exc

    def __repr__(self) -> str:
        return f"<Translator {redact_url(self._url)}>"
