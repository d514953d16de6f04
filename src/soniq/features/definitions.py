"""Job definitions stored in the database: ``app.definitions`` (``list``, ``get``, ``versions``).

Every worker writes the definitions of the jobs it registered when it starts (queue, priority,
max attempts, timeout, encryption and ``options`` for later rules, with its app's defaults
filled in; ``soniq.runtime.heartbeat``), one row per job name and distinct definition
(:class:`~soniq.backends.stores.DefinitionStore`, ``backend.definitions``). Which definition of
a name is current is decided here, by *first-seen* time: the one whose ``first_seen_at`` is the
latest. During a deploy the new definition wins as soon as the first new worker starts, and an
old worker that restarts afterwards re-writes its older definition, which moves only that row's
``last_seen_at``: it does not take the name back. (A rollback to an earlier definition is
therefore not current until the definition changes again: the rows of the old one keep their
first-seen time.)

Rows are read afresh on every call (no cache). A row that is not a definition (written by hand)
is skipped with a warning naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from soniq.errors import DatabaseError, UnsupportedOperationError
from soniq.registry import validate_name

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Iterable

    from soniq.backends.base import StorageBackend
    from soniq.backends.stores import DefinitionStore, StoredDefinition

__all__ = ["LIMITS_TTL", "Definitions", "StoredLimits", "current"]

#: Seconds a producer keeps the limits it read from a job name's stored definition.
LIMITS_TTL = 30.0


def current(versions: Iterable[StoredDefinition]) -> dict[str, StoredDefinition]:
    """The current definition of each name among ``versions``: the latest ``first_seen_at``
    (ties, which only the same instant can make, go to the greater digest)."""
    found: dict[str, StoredDefinition] = {}
    for version in versions:
        name = version.definition.name
        best = found.get(name)
        if best is None or ((version.first_seen_at, version.digest)
                            > (best.first_seen_at, best.digest)):
            found[name] = version
    return found


class StoredLimits:
    """The concurrency limit of job names a producer does not register, read from their current
    stored definitions (``options``: ``concurrency_limit``, ``concurrency_key``) and kept
    :data:`LIMITS_TTL` seconds per name. A backend without definitions, or one that cannot be
    read, gives no limit: the worker that claims such a job gives it its key."""

    def __init__(self, backend: StorageBackend) -> None:
        self._backend = backend
        self._cache: dict[str, tuple[float, int | None, str | None]] = {}

    async def get(self, name: str) -> tuple[int | None, str | None]:
        """(limit, key argument) of job ``name``; (None, None) when it is not limited."""
        now = anyio.current_time()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        store = self._backend.definitions
        limit = key = None
        if store is not None:
            try:
                found = current(await store.list(name)).get(name)
            except DatabaseError:
                found = None
            options = {} if found is None else found.definition.options
            raw_limit, raw_key = options.get("concurrency_limit"), options.get("concurrency_key")
            if isinstance(raw_limit, int) and not isinstance(raw_limit, bool) and raw_limit >= 1:
                limit = raw_limit
                key = raw_key if isinstance(raw_key, str) else None
        self._cache[name] = (now + LIMITS_TTL, limit, key)
        return limit, key


class Definitions:
    """Read the stored job definitions. Touching it opens nothing; each call initialises the app
    first."""

    def __init__(self, backend: StorageBackend, *, ready: Callable[[], Awaitable[None]]) -> None:
        self._backend = backend
        self._ready = ready

    def __repr__(self) -> str:
        return f"<Definitions backend={self._backend.name}>"

    async def _store(self) -> DefinitionStore:
        store = self._backend.definitions
        if store is None:
            raise UnsupportedOperationError(
                f"the {self._backend.name} backend stores no job definitions "
                "(backend.definitions); use the memory, sqlite or postgres backend, or implement "
                "DefinitionStore")
        await self._ready()
        return store

    async def list(self) -> builtins.list[StoredDefinition]:
        """The current definition of every job name a worker has stored, by name."""
        store = await self._store()
        found = current(await store.list())
        return [found[name] for name in sorted(found)]

    async def get(self, name: str) -> StoredDefinition | None:
        """The current definition of ``name``, or None when no worker has stored one."""
        validate_name(name, "job name")
        store = await self._store()
        return current(await store.list(name)).get(name)

    async def versions(self, name: str) -> builtins.list[StoredDefinition]:
        """Every stored definition of ``name``, oldest first-seen first (the last is current)."""
        validate_name(name, "job name")
        store = await self._store()
        return sorted(await store.list(name), key=lambda v: (v.first_seen_at, v.digest))
