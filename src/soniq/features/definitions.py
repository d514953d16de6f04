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

:meth:`Definitions.coverage` joins the current definitions with the live workers' job names (what
``soniq status`` and the dashboard show): a name no live worker knows is ``flagged``, since its
jobs wait until a worker that registered it starts.

Producers read the defaults (queue, priority, max attempts, uniqueness, encryption) of a job name
they have not registered from here, through a :class:`DefinitionCache` that keeps each answer for
``definitions_cache_ttl`` seconds (``app.producer.defaults``). It can be stale: after a deploy
changes a job's queue, a producer may still send its jobs to the old queue for up to that TTL (and
a name that had no definition when first asked keeps the settings' defaults as long).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from soniq.errors import UnsupportedOperationError
from soniq.registry import validate_name
from soniq.serialization import utc_now

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Iterable

    from soniq.backends.base import StorageBackend
    from soniq.backends.stores import DefinitionStore, JobDefinition, StoredDefinition
    from soniq.types import JobCoverage

__all__ = ["WAITING_SAMPLE", "DefinitionCache", "Definitions", "current"]

#: How many waiting jobs (the first in claim order) ``coverage`` reads for their names.
WAITING_SAMPLE = 10_000


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


class Definitions:
    """Read the stored job definitions. Touching it opens nothing; each call initialises the app
    first."""

    def __init__(self, backend: StorageBackend, *, ready: Callable[[], Awaitable[None]],
                 heartbeat_timeout: float) -> None:
        self._backend = backend
        self._ready = ready
        self._heartbeat_timeout = heartbeat_timeout

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

    async def coverage(self, *, now: datetime | None = None) -> builtins.list[JobCoverage]:
        """Per job name, by name: the queue of its current definition (None when no definition
        is stored, e.g. one a live worker knows whose store write failed), how many live workers
        registered it, and ``flagged`` when none does. A worker is live while its last heartbeat
        is within ``heartbeat_timeout`` of ``now`` (default: this machine's clock). Names of
        waiting jobs are listed too (the first :data:`WAITING_SAMPLE` claimable jobs, in claim
        order), so a name enqueued before any worker registered it -- a typo through a
        ``TaskRef``, a job a deploy has not reached yet -- is flagged at once."""
        await self._ready()
        store = self._backend.definitions
        found = current(await store.list()) if store is not None else {}
        waiting = await store.waiting(WAITING_SAMPLE) if store is not None else []
        cutoff = (now or utc_now()) - timedelta(seconds=self._heartbeat_timeout)
        live: dict[str, int] = {}
        for worker in await self._backend.list_workers():
            if worker["last_heartbeat"] >= cutoff:
                for name in set(worker["job_names"] or ()):
                    live[name] = live.get(name, 0) + 1
        return [{"name": name,
                 "queue": found[name].definition.queue if name in found else None,
                 "live_workers": live.get(name, 0), "flagged": name not in live}
                for name in sorted(found.keys() | live.keys() | set(waiting))]


class DefinitionCache:
    """The current definition of job names a producer enqueues without registering them, each
    kept ``ttl`` seconds (0: read on every call), a missing one too. ``clock`` gives monotonic
    seconds (tests replace it). Stale for up to ``ttl`` by design: see the module docstring."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, tuple[float, JobDefinition | None]] = {}

    def __repr__(self) -> str:
        return f"<DefinitionCache ttl={self.ttl} names={len(self._entries)}>"

    def cached(self, name: str, *, stale: bool = False) -> tuple[bool, JobDefinition | None]:
        """``(kept, definition)`` of ``name`` without I/O: ``kept`` while the entry is fresh
        (with ``stale``, as long as there is one); ``definition`` None when none is stored."""
        entry = self._entries.get(name)
        if entry is None or not (stale or self.clock() < entry[0]):
            return False, None
        return True, entry[1]

    async def get(self, name: str,
                  store: Callable[[], Awaitable[DefinitionStore | None]]) -> JobDefinition | None:
        """The current definition of ``name``: kept, or read from the store ``store()`` gives
        (a backend without one: None, the settings' defaults apply)."""
        kept, found = self.cached(name)
        if kept:
            return found
        definitions = await store()
        if definitions is not None:
            version = current(await definitions.list(name)).get(name)
            found = None if version is None else version.definition
        if self.ttl > 0:
            self._entries[name] = (self.clock() + self.ttl, found)
        return found
