"""The PostgreSQL storage backend (asyncpg). The only package that imports ``asyncpg``."""

from __future__ import annotations

from soniq.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
