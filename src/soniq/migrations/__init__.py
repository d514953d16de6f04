"""Numbered SQL migrations per backend: ``migrations/<backend>/NNNN_name.sql``.

PostgreSQL's are applied only by ``soniq setup`` / ``app.setup()``; SQLite applies its own on first
use (an embedded database has a single owner). Each file runs in one transaction together with the
row that records it in ``soniq_migrations``. This module owns that SQL: the files, the
``soniq_migrations`` table (:data:`MIGRATIONS_TABLE`), the script ``soniq migrations sql`` prints
for teams that apply migrations with their own tool (:func:`migration_script`) and what a database
still lacks (:func:`pending_migrations`).

PostgreSQL's migrations name their objects unqualified. In a ``db_schema`` they run after
:func:`schema_setup`'s statements: the schema is created, and each migration's transaction starts
with ``SET LOCAL search_path`` to it -- transaction-scoped, so nothing stays on the session (safe
behind PgBouncer). That is the only place Soniq sets ``search_path``; its statements at run time
name the schema in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["MIGRATIONS_TABLE", "Migration", "load_migrations", "migration_script",
           "pending_migrations", "schema_setup"]

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

#: The table of applied migrations, per backend; created before the first migration runs (a
#: migration cannot record itself in a table it has yet to create).
MIGRATIONS_TABLE = {
    "postgres": """CREATE TABLE IF NOT EXISTS soniq_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)""",
    "sqlite": "CREATE TABLE IF NOT EXISTS soniq_migrations ("
              "version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
}

#: The row that records a migration, as literal SQL for the printed script (names are
#: ``[a-z0-9_]+``, so quoting them is safe); the adapters record theirs with bind parameters.
_RECORD = {
    "postgres": "INSERT INTO soniq_migrations (version, name) VALUES ({version}, '{name}') "
                "ON CONFLICT (version) DO NOTHING",
    "sqlite": "INSERT INTO soniq_migrations (version, name, applied_at) "
              "VALUES ({version}, '{name}', datetime('now'))",
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def load_migrations(backend: str) -> list[Migration]:
    """The migrations shipped for ``backend`` ("postgres" or "sqlite"), in version order."""
    folder = resources.files(__package__).joinpath(backend)
    found = []
    for entry in folder.iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions for {backend}: {versions}")
    return found


def pending_migrations(backend: str, applied: Collection[str]) -> list[str]:
    """The labels of the shipped migrations missing from ``applied`` (labels as in
    :attr:`Migration.label`), in version order: what ``soniq migrate-status`` reports."""
    return [m.label for m in load_migrations(backend) if m.label not in applied]


def schema_setup(schema: str) -> tuple[str, str]:
    """``(create, enter)`` for PostgreSQL's ``db_schema`` ``schema`` (a name the settings
    validated): ``CREATE SCHEMA IF NOT EXISTS``, and the ``SET LOCAL search_path`` that starts
    each migration's transaction so that its unqualified names are created and found there."""
    if '"' in schema:
        raise ValueError(f"not a schema name: {schema!r}")
    quoted = f'"{schema}"'
    return f"CREATE SCHEMA IF NOT EXISTS {quoted}", f"SET LOCAL search_path TO {quoted}"


def migration_script(backend: str, *, from_version: int = 1, schema: str | None = None) -> str:
    """The SQL ``soniq migrations sql`` prints: the ``soniq_migrations`` table, then each migration
    from ``from_version`` on in its own transaction with the row that records it, so workers and
    ``soniq setup`` see the database as set up; with ``schema`` (PostgreSQL's ``db_schema``, a
    validated name), all of it in that schema (see :func:`schema_setup`). Raises ``ValueError``
    when there is no migration."""
    migrations = [m for m in load_migrations(backend) if m.version >= from_version]
    if not migrations:
        raise ValueError(f"no {backend} migrations from version {from_version}")
    first, last = migrations[0].label, migrations[-1].label
    where = "" if schema is None else f" in schema {schema}"
    parts = [f"-- Soniq schema for {backend}{where}: migrations {first} to {last}"]
    enter = ""
    if schema is None:
        parts.append(f"{MIGRATIONS_TABLE[backend]};")
    else:
        create, enter = schema_setup(schema)
        enter += ";\n"
        parts.append(f"{create};\nBEGIN;\n{enter}{MIGRATIONS_TABLE[backend]};\nCOMMIT;")
    if backend == "sqlite":  # a migration may rebuild a table others reference (as the adapter)
        parts.append("PRAGMA foreign_keys = OFF;")
    for migration in migrations:
        record = _RECORD[backend].format(version=migration.version, name=migration.name)
        parts.append(f"\n-- soniq migration {migration.label}\nBEGIN;\n{enter}"
                     f"{migration.sql.strip()}\n{record};\nCOMMIT;")
    return "\n".join(parts)
