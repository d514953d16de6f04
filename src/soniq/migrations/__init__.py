"""Numbered SQL migrations per backend: ``migrations/<backend>/NNNN_name.sql``.

PostgreSQL's are applied only by ``soniq setup`` / ``app.setup()``; SQLite applies its own on first
use (an embedded database has a single owner). Each file runs in one transaction together with the
row that records it in ``soniq_migrations``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["Migration", "load_migrations"]

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


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
