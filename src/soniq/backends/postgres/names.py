"""Where Soniq's objects live in one PostgreSQL database: the ``db_schema`` setting made into
names, once per schema.

Every statement names its tables through a :class:`Names` (``f"... FROM {n.jobs} ..."``): with
``db_schema`` unset the names are the plain ones (``soniq_jobs``, found through the connection's
``search_path`` as always, so the default renders exactly the SQL it always did); with
``db_schema="alpha"`` every table is qualified (``"alpha".soniq_jobs``) -- ``search_path`` is never
changed at run time (behind PgBouncer a ``SET`` would stay on whichever server connection ran it,
and cached prepared statements would keep resolving against the old one). Indexes, sequences and
constraints live with their tables, so they follow without being named.

The other per-schema objects: the NOTIFY channels (``<schema>_soniq_jobs``, or a digest of the
schema when that would pass PostgreSQL's 63 bytes) and the key of the advisory lock ``soniq setup``
takes. The unset default and ``public`` keep the names they always had, so the two see each other.

Schema names are checked by the settings (:data:`soniq.settings.DB_SCHEMA`: lowercase letters,
digits and ``_``, at most 63 bytes, not ``pg_*``) and quoted here anyway; channel names are made of
the same characters, so statements may carry them as literals.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

__all__ = ["DEFAULT_CHANNELS", "MIGRATION_LOCK_KEY", "Names", "names", "quote"]

#: PostgreSQL's longest identifier (NAMEDATALEN - 1), in bytes.
_LONGEST = 63
#: The logical channel names the seam's ``listen`` callback reports (``StorageBackend.listen``).
DEFAULT_CHANNELS = ("soniq_jobs", "soniq_cancel", "soniq_queues")
#: The advisory lock of ``soniq setup`` in the default schema: b"soniq-mg" read as a big-endian
#: int64; any fixed value works, it only has to be one no other tool is likely to pick.
MIGRATION_LOCK_KEY = int.from_bytes(b"soniq-mg", "big", signed=True)


def quote(identifier: str) -> str:
    """``identifier`` (a name already validated: a schema, a database) as a quoted SQL
    identifier. A name with a double quote in it is refused rather than escaped."""
    if '"' in identifier or "\0" in identifier:
        raise ValueError(f"not a plain identifier: {identifier!r}")
    return f'"{identifier}"'


@dataclass(frozen=True, slots=True)
class Names:
    """The names one Soniq instance uses in its database (see the module's docstring)."""

    #: ``db_schema`` (None: the connection's default schema, unqualified names).
    schema: str | None
    jobs: str
    workers: str
    maintenance: str
    migrations: str
    events: str
    event_readers: str
    schedules: str
    schedule_fires: str
    job_logs: str
    webhook_endpoints: str
    webhook_deliveries: str
    webhook_events: str
    stats_minute: str
    job_definitions: str
    slots: str
    queues: str
    audit: str
    rate_buckets: str
    dependencies: str
    workflows: str
    #: Dedup keys and the job standing on each (:mod:`.keys`).
    unique_keys: str
    #: Durable functions' saved steps (:mod:`.steps`).
    steps: str
    #: The NOTIFY channel that wakes workers (payload: the queue).
    jobs_channel: str
    #: The NOTIFY channel that asks a job's worker to cancel it (payload: the job id).
    cancel_channel: str
    #: The NOTIFY channel that says a queue's setting changed (payload: the queue).
    queues_channel: str
    #: The NOTIFY channel that says awaited jobs ended (payload: their ids; migration 0018).
    awaited_channel: str
    #: The key of the advisory lock that serialises ``soniq setup`` runs on this schema.
    migration_lock_key: int

    @property
    def channels(self) -> dict[str, str]:
        """Each channel's name in the database -> its logical name (:data:`DEFAULT_CHANNELS`)."""
        return dict(zip((self.jobs_channel, self.cancel_channel, self.queues_channel),
                        DEFAULT_CHANNELS, strict=True))


@functools.cache
def names(schema: str | None) -> Names:
    """The names for ``schema`` (built once per schema: instances sharing it share them)."""
    prefix = "" if schema is None else f"{quote(schema)}."
    own = schema not in (None, "public")  # public is where the unset default lives
    digest = hashlib.sha256(f"soniq:{schema}".encode()).digest()

    def channel(base: str) -> str:
        if not own:
            return base
        name = f"{schema}_{base}"
        # A digest form ends in a hex digit, a plain one in "jobs"/"cancel": they never meet.
        return name if len(name.encode()) <= _LONGEST else f"{base}_{digest[:16].hex()}"

    def table(name: str) -> str:
        return f"{prefix}soniq_{name}"

    return Names(
        schema=schema, jobs=table("jobs"), workers=table("workers"),
        maintenance=table("maintenance"), migrations=table("migrations"), events=table("events"),
        event_readers=table("event_readers"), schedules=table("schedules"),
        schedule_fires=table("schedule_fires"), job_logs=table("job_logs"),
        webhook_endpoints=table("webhook_endpoints"),
        webhook_deliveries=table("webhook_deliveries"), webhook_events=table("webhook_events"),
        stats_minute=table("stats_minute"), job_definitions=table("job_definitions"),
        slots=table("slots"), queues=table("queues"), audit=table("audit"),
        rate_buckets=table("rate_buckets"), dependencies=table("dependencies"),
        workflows=table("workflows"), unique_keys=table("unique_keys"), steps=table("steps"),
        jobs_channel=channel("soniq_jobs"), cancel_channel=channel("soniq_cancel"),
        queues_channel=channel("soniq_queues"), awaited_channel=channel("soniq_awaited"),
        migration_lock_key=(int.from_bytes(digest[:8], "big", signed=True) if own
                            else MIGRATION_LOCK_KEY),
    )
