"""Storage backends behind one protocol (``base.StorageBackend``), and the choice between them.

Adapters are imported only when chosen, so ``import soniq`` loads no database driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from soniq.backends.base import StorageBackend
from soniq.errors import ConfigurationError, did_you_mean

if TYPE_CHECKING:
    from soniq.settings import SoniqSettings

__all__ = ["StorageBackend", "resolve_backend"]

_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_BACKEND_NAMES = ("postgres", "sqlite", "memory")


def _sqlite_path(url: str) -> str | None:
    """The file path when ``url`` names a SQLite database, else None."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")  # sqlite:////abs/path keeps its leading slash
    if url.startswith("sqlite://"):
        raise ConfigurationError(
            f"SQLite URLs take three slashes: 'sqlite:///relative.db' or 'sqlite:////abs/path.db' "
            f"(got {url!r})"
        )
    return url if url.lower().endswith(_SQLITE_SUFFIXES) and "://" not in url else None


def _make_backend(kind: str, url: str, settings: SoniqSettings) -> StorageBackend:
    if kind == "memory":
        from soniq.backends.memory import MemoryBackend

        return MemoryBackend()
    if kind == "sqlite":
        from soniq.backends.sqlite import SqliteBackend

        return SqliteBackend(_sqlite_path(url) or "soniq.db")
    from soniq.backends.postgres import PostgresBackend

    return PostgresBackend(url, settings)


def resolve_backend(backend: StorageBackend | str | None, url: str,
                    settings: SoniqSettings) -> StorageBackend:
    """The backend for ``Soniq(backend=..., database_url=...)``: an instance as given, a name
    (``"postgres"``, ``"sqlite"``, ``"memory"``), or, with None, detected from the URL."""
    chosen = _resolve(backend, url, settings)
    if settings.listen_url is not None and chosen.name != "postgres":
        raise ConfigurationError(
            f"listen_url (SONIQ_LISTEN_URL) is a PostgreSQL setting, but the storage backend is "
            f"{chosen.name}, which has no LISTEN connection; unset it"
        )
    if settings.db_schema is not None and chosen.name != "postgres":
        raise ConfigurationError(
            f"db_schema (SONIQ_DB_SCHEMA={settings.db_schema}) is a PostgreSQL setting, but the "
            f"storage backend is {chosen.name}, which has no schemas; unset it"
        )
    return chosen


def _resolve(backend: StorageBackend | str | None, url: str,
             settings: SoniqSettings) -> StorageBackend:
    if backend is None:
        if url.startswith(("postgresql://", "postgres://")):
            return _make_backend("postgres", url, settings)
        if _sqlite_path(url) is not None:
            return _make_backend("sqlite", url, settings)
        if url in ("memory", "memory://"):
            return _make_backend("memory", url, settings)
        raise ConfigurationError(
            "cannot tell the storage backend from database_url: use 'postgresql://...', a path "
            "ending .db/.sqlite/.sqlite3, 'sqlite:///path', or pass backend='memory'"
        )
    if isinstance(backend, str):
        if backend not in _BACKEND_NAMES:
            raise ConfigurationError(
                f"unknown backend {backend!r}{did_you_mean(backend, _BACKEND_NAMES)}; "
                f"choose one of {', '.join(_BACKEND_NAMES)} or pass a StorageBackend instance"
            )
        return _make_backend(backend, url, settings)
    if not isinstance(backend, StorageBackend):
        raise ConfigurationError(
            f"backend must be a StorageBackend or one of {', '.join(_BACKEND_NAMES)}, "
            f"not {type(backend).__name__}"
        )
    return backend
