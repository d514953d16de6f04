"""``soniq.migrations``: what a database still lacks, and the script for applying it by hand
(applied to real databases in tests/backends/test_postgres.py and test_sqlite.py)."""

from __future__ import annotations

import pytest

from soniq.migrations import load_migrations, migration_script, pending_migrations


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_pending_is_what_the_database_lacks_in_version_order(backend: str) -> None:
    labels = [m.label for m in load_migrations(backend)]
    assert pending_migrations(backend, labels) == []
    assert pending_migrations(backend, labels[:-1]) == [labels[-1]]  # missing the newest
    assert pending_migrations(backend, labels[1:]) == [labels[0]]
    assert pending_migrations(backend, []) == labels


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_script_starts_at_the_version_asked_for(backend: str) -> None:
    migrations = load_migrations(backend)
    newest = migrations[-1]
    script = migration_script(backend, from_version=newest.version)
    assert script.startswith(f"-- Soniq schema for {backend}: migrations {newest.label} to "
                             f"{newest.label}\nCREATE TABLE IF NOT EXISTS soniq_migrations")
    assert script.count("\nBEGIN;\n") == script.count("\nCOMMIT;") == 1
    assert f"VALUES ({newest.version}, '{newest.name}'" in script
    assert migration_script(backend).count("\nBEGIN;\n") == len(migrations)
    with pytest.raises(ValueError, match=f"no {backend} migrations from version"):
        migration_script(backend, from_version=newest.version + 1)
