"""The SQLite storage adapter: an embedded, single-host backend over aiosqlite.

aiosqlite is imported only inside this package.
"""

from __future__ import annotations

from soniq.backends.sqlite.backend import SqliteBackend

__all__ = ["SqliteBackend"]
