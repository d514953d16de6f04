"""Concurrency slots on PostgreSQL: the memory backend's semantics
(:mod:`soniq.backends.memory.slots`) under READ COMMITTED, with many writers at once.

- **Taking a slot** at insert is one statement for a single job (``SlotSql.insert_limited_job``:
  ``INSERT INTO soniq_slots ... ON CONFLICT DO UPDATE SET active = active + 1 WHERE active <
  limit`` then the job row, parked -- ``hold = 'slot'`` -- when no slot was taken). ON CONFLICT
  DO UPDATE locks the slot row even when its WHERE is false, so a release that runs meanwhile
  waits for this insert's commit.
- **Releasing** (a slot holder finished, was cancelled, deleted or dead-lettered by the rescue)
  takes two statements in the releasing transaction: ``SlotSql.lock`` locks the slot rows in
  (job_name, key) order -- waiting for inserts that hold them -- and ``SlotSql.hand_over``, a new
  statement and so a new snapshot that sees the jobs those inserts parked, gives each freed
  slot to its key's oldest parked job, else lowers ``active``. Counting running rows in one
  statement would not do: two concurrent claims would both see the slot free.
- Only rows whose change the statement made (the lease fence held) free a slot, so an outcome
  refused by the fence frees nothing.

Asyncio-native coroutines that run inside :func:`soniq.backends._bridge.call` (asyncpg only).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from datetime import datetime

    from soniq.backends.postgres.names import Names
    from soniq.types import NewJob

__all__ = ["FREED", "SlotSql", "changing", "freed", "hand_over", "insert_limited",
           "park_with_pool", "reconcile"]

#: The slot a changed job row freed, if any, as two columns the finish, cancel and rescue
#: statements return (on the row after the change, aliased ``j``): ``freed``, the row's
#: ``job_name`` when it was a limited, unparked job now done, dead-lettered or cancelled, else
#: NULL; ``freed_key``, its key. See :func:`freed`.
FREED = ("CASE WHEN j.concurrency_key IS NOT NULL AND j.hold IS DISTINCT FROM 'slot' AND "
         "j.status IN "
         "('done', 'dead_letter', 'cancelled') THEN j.job_name END AS freed, "
         "j.concurrency_key AS freed_key")


#: What an unparked job's ``hold`` becomes (row aliased ``j``): claimable, or -- rate-limited --
#: claimable with a token of its bucket (:mod:`.gates`).
_UNPARKED = "CASE WHEN j.rate_key IS NULL THEN NULL ELSE 'rate' END"


def _buckets(n: Names) -> str:
    """A CTE after ``inserted`` (the new rows with job_name, rate_key): the rate buckets of
    their keys exist before any claim looks for them (full; :mod:`.gates` locks them). An
    existing bucket is left alone, without waiting for a claim that holds it."""
    return f"""buckets AS (
    INSERT INTO {n.rate_buckets} (job_name, key)
    SELECT DISTINCT job_name, rate_key FROM inserted WHERE rate_key IS NOT NULL
    ON CONFLICT (job_name, key) DO NOTHING
)"""


class SlotSql:
    """The statements of the concurrency slots for one schema's :class:`~.names.Names` (built
    once per schema with the rest: ``Sql.slots``)."""

    def __init__(self, n: Names) -> None:
        #: One limited job without a dedup key: Sql.insert_job's $1-$7, $8 concurrency key,
        #: $9 the limit, $10 rate key.
        #: Takes a slot or parks the job, and wakes the queue when it may run.
        self.insert_limited_job = f"""
WITH slot AS (
    INSERT INTO {n.slots} AS s (job_name, key, active) VALUES ($2::text, $8::text, 1)
    ON CONFLICT (job_name, key) DO UPDATE SET active = s.active + 1 WHERE s.active < $9::integer
    RETURNING 1
), inserted AS (
    INSERT INTO {n.jobs} (id, job_name, queue, priority, status, args, max_attempts,
                            scheduled_at, concurrency_key, hold, rate_key)
    VALUES ($1::uuid, $2::text, $3::text, $4::smallint, 'queued', $5::jsonb, $6::integer,
            COALESCE($7::timestamptz, now()), $8::text,
            CASE WHEN NOT EXISTS (SELECT 1 FROM slot) THEN 'slot'
                 WHEN $10::text IS NOT NULL THEN 'rate' END, $10::text)
    RETURNING id, job_name, queue, scheduled_at, hold, rate_key
), {_buckets(n)}
SELECT id, CASE WHEN hold IS DISTINCT FROM 'slot' AND scheduled_at <= now()
                THEN pg_notify('{n.jobs_channel}', queue) END AS woken
FROM inserted
"""

        #: Lock the slot rows of $1 job names / $2 keys (creating missing ones at 0), in
        #: (job_name, key) order; returns each row's ``active``.
        self.lock = f"""
INSERT INTO {n.slots} AS s (job_name, key, active)
SELECT job_name, key, 0 FROM unnest($1::text[], $2::text[]) AS f (job_name, key)
ORDER BY job_name, key
ON CONFLICT (job_name, key) DO UPDATE SET active = s.active
RETURNING job_name, key, active
"""

        #: Lock existing slot rows ($1 job names / $2 keys) in (job_name, key) order, writing
        #: nothing: a release's slot row exists (its job took the slot). It also lets the rest
        #: of the transaction (the hand-over) run its cached generic plan: the worker loops'
        #: connections plan every execution (``schema.CUSTOM_PLANS``), ~2 ms for the hand-over,
        #: whose plan is index lookups whatever the arrays hold.
        self.lock_held = f"""
SELECT 1 FROM {n.slots}
WHERE (job_name, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
  AND (SELECT set_config('plan_cache_mode', 'force_generic_plan', true)) IS NOT NULL
ORDER BY job_name, key
FOR UPDATE
"""

        #: After ``lock``, in the same transaction: $1 job names, $2 keys, $3 how many slots each
        #: freed. Each goes to the key's oldest parked jobs, the rest lower ``active``; the unparked
        #: jobs' queues are woken.
        self.hand_over = f"""
WITH freed AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::integer[]) AS f (job_name, key, n)
), heirs AS (
    SELECT p.id FROM freed AS f CROSS JOIN LATERAL (
        SELECT j.id FROM {n.jobs} AS j
        WHERE j.job_name = f.job_name AND j.concurrency_key = f.key
          AND j.status = 'queued' AND j.hold = 'slot'
        ORDER BY j.id LIMIT f.n
        FOR UPDATE
    ) AS p
), unparked AS (
    UPDATE {n.jobs} AS j SET hold = {_UNPARKED} FROM heirs WHERE j.id = heirs.id
    RETURNING j.job_name, j.concurrency_key, j.queue, j.scheduled_at
), counted AS (
    UPDATE {n.slots} AS s SET active = GREATEST(s.active - (f.n - COALESCE(u.n, 0)), 0)
    FROM freed AS f
    LEFT JOIN (SELECT job_name, concurrency_key, count(*)::integer AS n FROM unparked
               GROUP BY job_name, concurrency_key) AS u
           ON u.job_name = f.job_name AND u.concurrency_key = f.key
    WHERE s.job_name = f.job_name AND s.key = f.key AND f.n > COALESCE(u.n, 0)
    RETURNING 1
)
SELECT count(pg_notify('{n.jobs_channel}', due.queue))
FROM (SELECT DISTINCT queue FROM unparked WHERE scheduled_at <= now()) AS due
"""

        #: $1 job names, $2 keys, $3 the active count to write.
        self.set_active = f"""
UPDATE {n.slots} AS s SET active = w.active
FROM unnest($1::text[], $2::text[], $3::integer[]) AS w (job_name, key, active)
WHERE s.job_name = w.job_name AND s.key = w.key
"""

        #: Many limited jobs with the holds decided (after ``lock``): Sql.insert_jobs's arrays
        #: $1-$8, then $9 concurrency keys, $10 holds, $11 rate keys (dedup keys already taken:
        #: see sql.py). Returns the rows inserted.
        self.insert_limited_jobs = f"""
WITH inserted AS (
    INSERT INTO {n.jobs} (id, job_name, queue, priority, status, args, max_attempts,
                            scheduled_at, dedup_key, concurrency_key, hold, rate_key)
    SELECT new.id, new.job_name, new.queue, new.priority, 'queued', new.args::jsonb,
           new.max_attempts, COALESCE(new.scheduled_at, now()), new.dedup_key,
           new.concurrency_key, new.hold, new.rate_key
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::text[], $6::integer[],
                $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[])
        AS new (id, job_name, queue, priority, args, max_attempts, scheduled_at, dedup_key,
                concurrency_key, hold, rate_key)
    RETURNING id, job_name, queue, scheduled_at, dedup_key, hold, rate_key
), {_buckets(n)}, woken AS (
    SELECT pg_notify('{n.jobs_channel}', due.queue)
    FROM (SELECT DISTINCT queue FROM inserted
          WHERE scheduled_at <= now() AND hold IS DISTINCT FROM 'slot') AS due
)
SELECT id::text, dedup_key, (SELECT count(*) FROM woken) AS woken FROM inserted
"""

        #: $1 id, $2 lease, $3 concurrency key, $4 now (NULL: the database clock). A claimed job
        #: enqueued without its key, back to the queue parked with it, its attempt refunded.
        self.park = f"""
UPDATE {n.jobs}
SET status = 'queued', attempts = attempts - 1, lease_id = NULL, worker_id = NULL,
    scheduled_at = COALESCE($4::timestamptz, now()), updated_at = COALESCE($4::timestamptz, now()),
    concurrency_key = $3::text, hold = 'slot'
WHERE id = $1::uuid AND status = 'processing' AND lease_id = $2::uuid AND concurrency_key IS NULL
RETURNING job_name
"""

        #: $1 job name, $2 key, $3 limit. Take a slot if fewer than the limit are taken (a row if
        #: so).
        self.take = f"""
INSERT INTO {n.slots} AS s (job_name, key, active) VALUES ($1::text, $2::text, 1)
ON CONFLICT (job_name, key) DO UPDATE SET active = s.active + 1 WHERE s.active < $3::integer
RETURNING 1
"""

        #: $1 id. Unpark one job (its slot was just taken) and wake its queue.
        self.unpark = f"""
UPDATE {n.jobs} AS j SET hold = {_UNPARKED} WHERE id = $1::uuid
RETURNING pg_notify('{n.jobs_channel}', queue)
"""

        #: $1 job names: the keys with parked jobs.
        self.parked_keys = f"""
SELECT DISTINCT job_name, concurrency_key FROM {n.jobs}
WHERE status = 'queued' AND hold = 'slot' AND job_name = ANY($1::text[])
"""

        #: After ``lock`` of the key: $1 job name, $2 key, $3 limit. Recount the key's slot holders,
        #: unpark up to the limit in id order, write the count; returns how many were unparked.
        self.reconcile = f"""
WITH holders AS (
    SELECT count(*)::integer AS n FROM {n.jobs}
    WHERE job_name = $1::text AND concurrency_key = $2::text AND concurrency_key IS NOT NULL
      AND hold IS DISTINCT FROM 'slot' AND status IN ('queued', 'processing')
), heirs AS (
    SELECT id FROM {n.jobs}
    WHERE job_name = $1::text AND concurrency_key = $2::text
      AND status = 'queued' AND hold = 'slot'
    ORDER BY id LIMIT GREATEST($3::integer - (SELECT n FROM holders), 0)
    FOR UPDATE
), unparked AS (
    UPDATE {n.jobs} AS j SET hold = {_UNPARKED} FROM heirs WHERE j.id = heirs.id
    RETURNING j.queue, j.scheduled_at
), counted AS (
    UPDATE {n.slots}
    SET active = (SELECT n FROM holders) + (SELECT count(*) FROM unparked)
    WHERE job_name = $1::text AND key = $2::text
    RETURNING 1
), woken AS (
    SELECT pg_notify('{n.jobs_channel}', due.queue)
    FROM (SELECT DISTINCT queue FROM unparked WHERE scheduled_at <= now()) AS due
)
SELECT (SELECT count(*) FROM unparked)::integer AS unparked,
       (SELECT count(*) FROM woken) AS woken
"""


def freed(rows: Iterable[Any]) -> Counter[tuple[str, str]]:
    """Slots freed, per (job name, key), by rows carrying :data:`FREED`'s columns: the row's
    ``job_name`` in ``freed`` when the change freed a slot (a limited, unparked job now done,
    dead-lettered or cancelled), its key in ``freed_key``."""
    return Counter((row["freed"], row["freed_key"]) for row in rows if row["freed"] is not None)


async def hand_over(conn: Any, s: SlotSql, slots: Mapping[tuple[str, str], int]) -> None:
    """Lock the slot rows, then hand each freed slot over (inside the caller's transaction)."""
    groups = sorted(slots)
    names, keys = [g[0] for g in groups], [g[1] for g in groups]
    await conn.fetch(s.lock_held, names, keys)
    await conn.fetchval(s.hand_over, names, keys, [slots[g] for g in groups])


async def insert_limited(conn: Any, s: SlotSql, jobs: Sequence[NewJob]) -> dict[str, str]:
    """Insert limited jobs (a concurrency key, a rate key or both) in the caller's transaction:
    lock their keys' slot rows, grant each key's free slots to its jobs in id order, park the
    rest; a rate-limited job that is not parked is held for its bucket (``hold = 'rate'``).
    Returns, for the jobs with a dedup key, the id holding each key (its own: keys are taken before, see sql.py)."""
    if len(jobs) == 1 and jobs[0].dedup_key is None and jobs[0].concurrency_key is not None:
        job = jobs[0]
        await conn.fetchrow(s.insert_limited_job, job.id, job.job_name, job.queue, job.priority,
                            job.args, job.max_attempts, job.scheduled_at,
                            job.concurrency_key, job.concurrency_limit or 1, job.rate_key)
        return {}
    slotted = [job for job in jobs if job.concurrency_key is not None]
    groups = sorted({(job.job_name, str(job.concurrency_key)) for job in slotted})
    locked = (await conn.fetch(s.lock, [g[0] for g in groups], [g[1] for g in groups])
              if groups else [])
    active = {(row["job_name"], row["key"]): row["active"] for row in locked}
    before = dict(active)
    holds: dict[str, str | None] = {}
    for job in sorted(jobs, key=lambda job: job.id):
        group = (job.job_name, str(job.concurrency_key))
        # An unknown limit (a replayed job) takes a slot only when none is taken.
        if job.concurrency_key is None or active[group] < (job.concurrency_limit or 1):
            if job.concurrency_key is not None:
                active[group] += 1
            holds[job.id] = None if job.rate_key is None else "rate"
        else:
            holds[job.id] = "slot"
    rows = await conn.fetch(
        s.insert_limited_jobs, [j.id for j in jobs], [j.job_name for j in jobs],
        [j.queue for j in jobs], [j.priority for j in jobs], [j.args for j in jobs],
        [j.max_attempts for j in jobs], [j.scheduled_at for j in jobs],
        [j.dedup_key for j in jobs], [j.concurrency_key for j in jobs],
        [holds[j.id] for j in jobs], [j.rate_key for j in jobs])
    holders = {row["dedup_key"]: row["id"] for row in rows if row["dedup_key"] is not None}
    changed = [g for g in groups if active[g] != before[g]]
    if changed:
        await conn.execute(s.set_active, [g[0] for g in changed], [g[1] for g in changed],
                           [active[g] for g in changed])
    return holders


async def park_with_pool(pool: Any, s: SlotSql, job_id: str, lease_id: str, key: str, limit: int,
                         now: datetime | None) -> bool:
    """A claimed job without its key back to the queue with it, in one transaction: it takes a
    slot if one is free, else stays parked. False when the lease did not hold."""
    async with pool.acquire() as conn, conn.transaction():
        job_name = await conn.fetchval(s.park, job_id, lease_id, key, now)
        if job_name is None:
            return False
        if await conn.fetchval(s.take, job_name, key, limit) is not None:
            await conn.fetchval(s.unpark, job_id)
        return True


async def reconcile(pool: Any, s: SlotSql, limits: Mapping[str, int]) -> int:
    """For each key with parked jobs whose name is in ``limits``: one transaction locks its slot
    row, recounts its holders and unparks up to the limit. How many jobs were unparked."""
    unparked = 0
    for row in await pool.fetch(s.parked_keys, sorted(limits)):
        job_name, key = row["job_name"], row["concurrency_key"]
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetch(s.lock, [job_name], [key])
            unparked += (await conn.fetchrow(s.reconcile, job_name, key,
                                             limits[job_name]))["unparked"]
    return unparked


async def changing(pool: Any, s: SlotSql, statement: str, *args: Any, atomic: bool) -> list[Any]:
    """Run a statement that may end slot holders (its rows carry :data:`FREED`'s columns) and
    hand their slots over. ``atomic``: both in one transaction (the caller knows the statement
    may free slots). Otherwise the statement runs alone and, should it free slots after all (a
    batch of jobs not known to be limited), the hand-over follows in a transaction of its own:
    the slots stay taken a moment longer, never twice."""
    if atomic:
        async with pool.acquire() as conn, conn.transaction():
            rows: list[Any] = await conn.fetch(statement, *args)
            slots = freed(rows)
            if slots:
                await hand_over(conn, s, slots)
            return rows
    rows = await pool.fetch(statement, *args)
    slots = freed(rows)
    if slots:
        async with pool.acquire() as conn, conn.transaction():
            await hand_over(conn, s, slots)
    return rows
