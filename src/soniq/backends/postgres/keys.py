"""Jobs with dedup keys inserted on PostgreSQL (the decision itself is
:func:`soniq.backends.keys.plan`), in one transaction on one connection:

1. :attr:`KeySql.lock` upserts a row per key into ``soniq_unique_keys`` (sorted, so concurrent
   inserts lock in one order) and returns each as stored: ``ON CONFLICT DO UPDATE`` locks a row
   that exists -- waiting for an insert that holds it to commit -- and a row it creates is marked
   fresh (``expires_at = '-infinity'``: no job stands on it yet).
2. :attr:`KeySql.standing` reads the standing jobs, locked. It is a new statement, so under READ
   COMMITTED its snapshot sees every job whose insert held a key before us; the lock keeps a
   claim (``SKIP LOCKED``) off a job about to be replaced.
3. The new jobs go in through the usual inserts; :attr:`KeySql.take` points their keys at them;
   :attr:`KeySql.replace` updates the standing jobs a ``replace`` changes.

No advisory locks: the key rows are the locks, held to the commit, so 50 concurrent inserts of
one key serialise on its row and exactly one inserts (``tests/test_uniqueness_postgres.py``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends.keys import Standing, plan
from soniq.types import JobStream

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from soniq.backends.postgres.names import Names
    from soniq.types import NewJob

__all__ = ["KeySql", "insert_keyed", "key_sql", "keyed"]


class KeySql:
    """The statements of :mod:`.keys` for one schema (:func:`key_sql`)."""

    def __init__(self, n: Names) -> None:
        #: $1 keys (distinct), $2 the first job of each (the row's job until one takes it).
        self.lock = f"""
INSERT INTO {n.unique_keys} AS k (key, job_id, expires_at)
SELECT new.key, new.job_id, '-infinity'
FROM unnest($1::text[], $2::uuid[]) AS new (key, job_id)
ORDER BY new.key
ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
RETURNING k.key, k.job_id::text, k.expires_at, k.expires_at = '-infinity' AS fresh,
          statement_timestamp() AS now
"""
        #: $1 ids of standing jobs. Their status and first enqueue, locked.
        self.standing = f"""
SELECT id::text, status, created_at FROM {n.jobs}
WHERE id = ANY ($1::uuid[])
ORDER BY id
FOR NO KEY UPDATE
"""
        #: $1 keys, $2 the jobs that took them, $3 their windows' ends (NULL: none).
        self.take = f"""
UPDATE {n.unique_keys} AS k
SET job_id = t.job_id, expires_at = t.expires_at, taken_at = statement_timestamp()
FROM unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS t (key, job_id, expires_at)
WHERE k.key = t.key
"""
        #: $1 ids, $2 args (JSON text), $3 scheduled_at: standing jobs a replace changes.
        self.replace = f"""
UPDATE {n.jobs} AS j
SET args = r.args::jsonb, scheduled_at = r.at, updated_at = statement_timestamp()
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS r (id, args, at)
WHERE j.id = r.id AND j.status IN ('waiting', 'queued')
"""


key_sql = functools.cache(KeySql)


def keyed(jobs: Sequence[NewJob]) -> bool:
    """Whether ``jobs`` carry dedup keys (a stream says so without being read; ``type() is``,
    not an ABC check: every enqueue asks)."""
    if type(jobs) is JobStream:
        return jobs.keyed
    return any(job.dedup_key is not None for job in jobs)


async def insert_keyed(conn: Any, s: KeySql, jobs: Sequence[NewJob],
                       write: Callable[[Any, Sequence[NewJob]], Awaitable[object]]) -> list[str]:
    """Insert ``jobs`` (some with dedup keys) in the caller's transaction on ``conn``, the new
    ones with ``write(conn, jobs)``; the id that stands for each (see :mod:`soniq.backends.keys`)."""
    first: dict[str, str] = {}
    for job in jobs:
        if job.dedup_key is not None:
            first.setdefault(job.dedup_key, job.id)
    rows = await conn.fetch(s.lock, list(first), list(first.values()))
    now = rows[0]["now"]
    stored = {row["key"]: row for row in rows if not row["fresh"]}
    jobs_of = {row["id"]: row for row in await conn.fetch(
        s.standing, [row["job_id"] for row in stored.values()])} if stored else {}
    standing = {}
    for key, row in stored.items():
        found = jobs_of.get(row["job_id"])
        standing[key] = Standing(row["job_id"], row["expires_at"],
                                 None if found is None else found["status"],
                                 None if found is None else found["created_at"])
    decided = plan(jobs, standing, now)
    if decided.insert:
        await write(conn, decided.insert)
    if decided.take:
        taken = list(decided.take.items())
        await conn.execute(s.take, [key for key, _ in taken], [v[0] for _, v in taken],
                           [v[1] for _, v in taken])
    if decided.replace:
        changed = list(decided.replace.items())
        await conn.execute(s.replace, [job_id for job_id, _ in changed],
                           [v[0] for _, v in changed], [v[1] for _, v in changed])
    return decided.ids
