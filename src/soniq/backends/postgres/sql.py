"""The core SQL text the PostgreSQL adapter runs: :class:`Sql`, one attribute per statement,
written once per schema (:func:`build`).

Every value is a bind parameter; the only text put together here is fixed when a schema's
statements are built: table and channel names from :class:`~.names.Names` (validated, quoted), and
fragments from code. Tests take the statements from :func:`build`
(``tests/backends/test_claim_plan.py`` EXPLAINs the claim statements), so what is measured is
exactly what runs. With ``db_schema`` unset the text is the plain, unqualified SQL.

JSON columns travel as text: parameters are ``$n::jsonb`` fed with ``str`` and results come back
as ``str`` (asyncpg's default for json/jsonb), so no connection needs a custom codec.

The statements that change jobs and may record their events in the event log come in two
variants (:mod:`.changes`), both built here once (:attr:`Sql.plain`, :attr:`Sql.logged`).
"""

from __future__ import annotations

import functools

from soniq.backends.base import JOB_COLUMNS
from soniq.backends.postgres.changes import statements
from soniq.backends.postgres.keys import key_sql
from soniq.backends.postgres.names import Names, names
from soniq.backends.postgres.slots import SlotSql

__all__ = ["CLOCK", "COPY_COLUMNS", "DATABASE_EXISTS", "MIGRATION_LOCK", "PING", "SCHEMA_EXISTS",
           "Sql", "build", "claim", "closed_queues", "known"]

_COLUMNS = ", ".join(JOB_COLUMNS)

# -- enqueue ---------------------------------------------------------------------------------------
# Jobs with a dedup key reach these statements only after their keys were resolved in the same
# transaction (:mod:`.keys`, the table soniq_unique_keys): each is a new job that took its key,
# so nothing here conflicts; dedup_key on the row says which key it took.

#: The columns a bulk COPY fills (plus scheduled_at when the jobs carry a time); the rest take
#: their defaults, as Sql.insert_jobs gives them.
COPY_COLUMNS = ("id", "job_name", "queue", "priority", "status", "args", "max_attempts")

#: The columns of a :class:`~soniq.types.ClaimedJob`, in its order.
_CLAIMED = ("id::text, job_name, queue, priority, args, attempts, max_attempts, scheduled_at, "
            "created_at, lease_id::text, concurrency_key, waiting_on IS NOT NULL, "
            "workflow_id::text, checkpoint")

#: The LISTEN connection's keepalive.
PING = "SELECT 1"

#: $1 now (NULL: the database clock).
CLOCK = "SELECT COALESCE($1::timestamptz, now())"

#: $1 key (``Names.migration_lock_key``). Serialises concurrent migrate() calls on one schema,
#: held by a transaction open for the whole run: transaction-scoped, so it also works through
#: PgBouncer's transaction pooling, where a session lock would stay behind on whichever server
#: connection took it.
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock($1::bigint)"

#: $1 database name (asked on the maintenance database before CREATE DATABASE).
DATABASE_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1::text)"

#: $1 schema name (asked before CREATE SCHEMA).
SCHEMA_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1::text)"


# -- claim -----------------------------------------------------------------------------------------
# One round trip claims a batch. The inner SELECT walks a partial index in exactly the ORDER BY's
# order and stops after $3 rows; SKIP LOCKED lets concurrent workers take disjoint batches.
# Releasing dedup_key keeps the "key only on queued rows" invariant (a CHECK constraint enforces
# it). $1 worker_id, $2 now (NULL: the database clock), $3 limit, $4 lease, $5 the job names the
# worker met and did not register (:func:`known`; usually empty), $6 queue / queues.
#
# Each job's lease is derived from a claim key the worker sends ($4, new per claim) and the job's
# id: when the connection drops after the claim committed but before its rows arrived, the worker
# still knows the key and takes those jobs up with Sql.adopt_claims (otherwise they would sit
# 'processing' under a worker that is alive and never heard of them: the rescue only takes jobs of
# silent workers). Leases stay distinct per job and per claim.
#
# "WHERE id = ANY (ARRAY(subquery))" rather than "UPDATE ... FROM (subquery) WHERE j.id = c.id":
# ARRAY() makes the subquery an init plan, so a plan made for a large table looks the rows up by
# primary key; with a join, a *generic* plan guesses LIMIT $3 at 10% of the table and hash-joins
# against a Seq Scan of all of it. No statement shape survives a generic plan cached while the
# table was small, though: pooled connections run with plan_cache_mode=force_custom_plan
# (schema.CUSTOM_PLANS). test_claim_plan checks both.
#
# A claim commits without waiting for its WAL flush (set_config(..., true): this transaction
# only), ~0.15 ms of every claim round trip here. A database crash can lose only the latest claims:
# those jobs are queued again and run again, which at-least-once allows (the first attempt's finish
# is fenced out by its lease). Finishes wait for the flush as usual, and flushing a finish's
# commit flushes its job's claim before it, so a job that finished never loses its claim.
def claim(n: Names, candidates: str) -> str:
    """The claim of the ids ``candidates`` selects in claim order, locked ``FOR UPDATE SKIP
    LOCKED`` (with the parameters above)."""
    return f"""
UPDATE {n.jobs}
SET status = 'processing',
    attempts = attempts + 1,
    lease_id = md5($4::text || id::text)::uuid,
    worker_id = $1::uuid,
    started_at = COALESCE($2::timestamptz, now()),
    updated_at = COALESCE($2::timestamptz, now()),
    dedup_key = NULL
WHERE id = ANY (ARRAY({candidates}))
  AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
RETURNING {_CLAIMED}
"""


def closed_queues(n: Names) -> str:
    """The queues the plain claims do not take from: paused, or gated (a concurrency or rate
    limit governs their starts: claimed by :mod:`.gates` only). An init plan, read once per
    claim. A worker that knows of such queues claims with :mod:`.queues` instead, which does not
    walk their backlog."""
    return (f"ARRAY(SELECT name FROM {n.queues} WHERE paused OR concurrency_limit IS NOT NULL "
            "OR rate_limit IS NOT NULL)")


def known(param: str) -> str:
    """Rows whose job name is not among the names in ``param`` (a ``text[]`` bind parameter:
    those a worker met and did not register, left for the workers that know them). Written as
    containment, like the paused queues: the planner guesses ``NOT (... <@ ...)`` as 99.5% true,
    so the claims keep walking their index with it, an empty array included."""
    return f"NOT (ARRAY[job_name] <@ {param}::text[])"


def _walk(n: Names, queue_filter: str) -> str:
    return f"""
    SELECT id FROM {n.jobs}
    WHERE status = 'queued' AND hold IS NULL AND {known('$5')}
      AND scheduled_at <= COALESCE($2::timestamptz, now()){queue_filter}
    ORDER BY priority, scheduled_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
"""


def _prune(n: Names, expired: str) -> str:
    """One batch ($2) of the ``expired`` rows deleted, except a dependency whose dependents have
    not all finished (they read its result)."""
    return f"""
DELETE FROM {n.jobs}
WHERE id = ANY (ARRAY(
    SELECT p.id FROM {n.jobs} AS p
    WHERE {expired}
      AND NOT (p.has_dependents AND EXISTS (
          SELECT 1 FROM {n.dependencies} AS d JOIN {n.jobs} AS w ON w.id = d.dependent
          WHERE d.dependency = p.id AND w.status NOT IN ('done', 'dead_letter', 'cancelled')))
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
"""


@functools.cache
def build(schema: str | None) -> Sql:
    """The statements for ``db_schema`` ``schema`` (None: unqualified names), built once per
    schema: backends sharing a schema share the strings, so asyncpg prepares them once."""
    return Sql(names(schema))


class Sql:
    """Every core statement of one schema (see :func:`build`)."""

    def __init__(self, n: Names) -> None:
        self.names = n
        #: One job without a dedup key, one round trip (a plain INSERT: nothing to conflict with).
        #: $1 id, $2 job_name, $3 queue, $4 priority, $5 args (JSON text), $6 max_attempts,
        #: $7 scheduled_at (NULL: now). A due job wakes listeners on its queue.
        self.insert_job = f"""
INSERT INTO {n.jobs} (id, job_name, queue, priority, status, args, max_attempts, scheduled_at)
VALUES ($1::uuid, $2::text, $3::text, $4::smallint, 'queued', $5::jsonb, $6::integer,
        COALESCE($7::timestamptz, now()))
RETURNING CASE WHEN scheduled_at <= now() THEN pg_notify('{n.jobs_channel}', queue) END AS woken
"""

        #: One job with a dedup key ($8; other parameters as insert_job), its key taken (see
        #: above). Returns the job's id. A job that is due wakes listeners on its queue.
        self.insert_unique_job = f"""
WITH inserted AS (
    INSERT INTO {n.jobs}
        (id, job_name, queue, priority, status, args, max_attempts, scheduled_at, dedup_key)
    VALUES ($1::uuid, $2::text, $3::text, $4::smallint, 'queued', $5::jsonb, $6::integer,
            COALESCE($7::timestamptz, now()), $8::text)
    RETURNING id, queue, scheduled_at
)
SELECT id,
       CASE WHEN id = $1::uuid AND scheduled_at <= now()
            THEN pg_notify('{n.jobs_channel}', queue) END AS woken
FROM inserted
"""

        #: Many jobs in one statement over parallel arrays (insert_unique_job's parameters), with
        #: one NOTIFY per distinct due queue -- never one per row. Always returns one row: how many
        #: queues were woken, and for rows carrying a dedup key, the id holding each key
        #: (callers map keys back to input positions; rows without a key keep the id they were
        #: given). The arrays must not repeat a dedup key.
        self.insert_jobs = f"""
WITH inserted AS (
    INSERT INTO {n.jobs}
        (id, job_name, queue, priority, status, args, max_attempts, scheduled_at, dedup_key)
    SELECT new.id, new.job_name, new.queue, new.priority, 'queued', new.args::jsonb,
           new.max_attempts, COALESCE(new.scheduled_at, now()), new.dedup_key
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::text[], $6::integer[],
                $7::timestamptz[], $8::text[])
        AS new (id, job_name, queue, priority, args, max_attempts, scheduled_at, dedup_key)
    RETURNING id, queue, scheduled_at, dedup_key
), woken AS (
    SELECT pg_notify('{n.jobs_channel}', due.queue)
    FROM (SELECT DISTINCT queue FROM inserted WHERE scheduled_at <= now()) AS due
)
SELECT (SELECT count(*) FROM woken) AS woken,
       array_agg(id) FILTER (WHERE dedup_key IS NOT NULL) AS dedup_ids,
       array_agg(dedup_key) FILTER (WHERE dedup_key IS NOT NULL) AS dedup_keys
FROM inserted
"""

        #: After a COPY: wake listeners on each queue in $1 whose earliest job ($2, NULL: now) is
        #: due.
        self.notify_due = f"""
SELECT count(pg_notify('{n.jobs_channel}', due.queue))
FROM unnest($1::text[], $2::timestamptz[]) AS due (queue, run_at)
WHERE due.run_at IS NULL OR due.run_at <= now()
"""


        # Paused queues are excluded as containment, not "queue <> ALL (...)": the planner guesses
        # an unknown array's "<> ALL" as nearly never true with few distinct queues and then sorts
        # a Seq Scan instead of walking the index (2 ms -> 120 ms per claim at 200 000 rows); its
        # guess for "NOT (... <@ ...)" is 99.5%.
        unpaused = f"NOT (ARRAY[queue] <@ {closed_queues(n)})"
        #: Claim from every queue (served by soniq_jobs_claim_idx).
        self.claim_all_queues = claim(n, _walk(n, f" AND {unpaused}"))
        #: Claim from the queue $6 (served by soniq_jobs_queue_claim_idx: an exact prefix, no
        #: filter; a paused $6 is a one-time filter, so nothing is walked).
        self.claim_one_queue = claim(n, _walk(
            n, f" AND queue = $6::text AND $6::text <> ALL ({closed_queues(n)})"))
        #: Claim from the queues in $6 (soniq_jobs_claim_idx in order, other queues filtered out).
        self.claim_some_queues = claim(n, _walk(n, f" AND queue = ANY($6::text[]) AND {unpaused}"))

        #: The jobs of claims whose answer was lost: $1 worker id, $2 those claims' keys. (A scan:
        #: it runs only after a connection was lost mid-claim.)
        self.adopt_claims = f"""
SELECT {_CLAIMED} FROM {n.jobs}
WHERE worker_id = $1::uuid AND status = 'processing'
  AND EXISTS (SELECT 1 FROM unnest($2::text[]) AS claim (key)
              WHERE lease_id = md5(claim.key || id::text)::uuid)
"""

        # -- reading and managing ------------------------------------------------------------------
        #: $1 id.
        self.get_job = f"SELECT {_COLUMNS} FROM {n.jobs} WHERE id = $1::uuid"

        # Newest first: ids are UUIDv7, so id order is creation order.
        #: $1 limit, $2 offset, then the filters (built by :func:`.where.where`).
        self.list_jobs = (f"SELECT {_COLUMNS} FROM {n.jobs}{{where}} ORDER BY id DESC "
                          "LIMIT $1 OFFSET $2")

        #: Counts per queue; COLLATE "C" sorts like Python's str (and the memory backend), whatever
        #: the database's collation.
        self.queue_stats = f"""
SELECT queue,
       count(*) FILTER (WHERE status = 'waiting') AS waiting,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'processing') AS processing,
       count(*) FILTER (WHERE status = 'done') AS done,
       count(*) FILTER (WHERE status = 'dead_letter') AS dead_letter,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled
FROM {n.jobs}
GROUP BY queue
ORDER BY queue COLLATE "C"
"""

        #: $1 id. Any state. Returns :data:`.slots.FREED`'s columns for a job holding a slot.
        self.delete_job = f"""
DELETE FROM {n.jobs} WHERE id = $1::uuid
RETURNING id, CASE WHEN concurrency_key IS NOT NULL AND hold IS DISTINCT FROM 'slot'
                    AND status IN ('queued', 'processing') THEN job_name END AS freed,
          concurrency_key AS freed_key
"""

        # -- workers and maintenance ---------------------------------------------------------------
        #: $1 id, $2 hostname, $3 pid, $4 queues (NULL: all), $5 concurrency, $6 now (NULL: db
        #: clock), $7 the job names it registered.
        self.register_worker = f"""
INSERT INTO {n.workers} AS w
    (id, hostname, pid, queues, concurrency, started_at, last_heartbeat, job_names)
VALUES ($1::uuid, $2::text, $3::integer, $4::text[], $5::integer,
        COALESCE($6::timestamptz, now()), COALESCE($6::timestamptz, now()), $7::text[])
ON CONFLICT (id) DO UPDATE
SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, queues = EXCLUDED.queues,
    concurrency = EXCLUDED.concurrency, started_at = EXCLUDED.started_at,
    last_heartbeat = EXCLUDED.last_heartbeat, job_names = EXCLUDED.job_names
"""

        #: True when soniq_jobs changed a lot since its statistics were gathered, or never had any:
        #: the threshold of autovacuum's own analyze (1 000 rows + 10% of the table). Without
        #: statistics the planner guesses a handful of queued rows and sorts the whole backlog on
        #: every claim (40 ms instead of 1 ms per claim at 100 000 queued rows, measured here).
        self.statistics_stale = f"""
SELECT s.n_mod_since_analyze >= 1000 + 0.1 * GREATEST(c.reltuples, 0)
FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
WHERE s.relid = '{n.jobs}'::regclass
"""

        self.analyze_jobs = f"ANALYZE {n.jobs}"

        #: $1 worker id.
        self.unregister_worker = f"DELETE FROM {n.workers} WHERE id = $1::uuid"

        self.list_workers = f"""
SELECT id, hostname, pid, queues, concurrency, started_at, last_heartbeat, job_names
FROM {n.workers} ORDER BY id
"""

        #: $1 cutoff: running jobs whose worker is gone or silent since before it. Rows being
        #: written right now are skipped (their worker is evidently alive); the rest are locked
        #: until the rescue commits.
        self.lost_jobs = f"""
SELECT j.id, j.lease_id, j.worker_id, j.attempts
FROM {n.jobs} AS j
WHERE j.status = 'processing'
  AND NOT EXISTS (SELECT 1 FROM {n.workers} AS w
                  WHERE w.id = j.worker_id AND w.last_heartbeat >= $1::timestamptz)
ORDER BY j.id
FOR UPDATE OF j SKIP LOCKED
"""

        #: $1 cutoff.
        self.remove_silent_workers = (f"DELETE FROM {n.workers} "
                                      "WHERE last_heartbeat < $1::timestamptz")

        #: $1 now (NULL: the database clock), $2 batch size. Deletes one batch of expired
        #: done/cancelled jobs (dead letters stay for inspection); callers repeat until a batch
        #: comes back short, so no transaction holds many row locks. ANY(ARRAY(...)) keeps the
        #: delete a primary-key lookup (see the claim).
        self.prune_jobs = _prune(n, "p.expires_at < COALESCE($1::timestamptz, now()) "
                                    "AND p.status IN ('done', 'cancelled')")
        #: $1 cutoff (now - result_ttl), $2 batch size: jobs cancelled before they started (no
        #: expires_at) that finished before the cutoff, as prune_jobs.
        self.prune_cancelled = _prune(n, "p.status = 'cancelled' AND p.expires_at IS NULL "
                                         "AND p.finished_at < $1::timestamptz")

        #: $1 task, $2 interval seconds, $3 now (NULL: the database clock). Returns a row only for
        #: the caller that moved the round forward: concurrent callers queue on the row lock and
        #: then see the fresh last_run_at.
        self.claim_maintenance = f"""
INSERT INTO {n.maintenance} AS m (task, last_run_at)
VALUES ($1::text, COALESCE($3::timestamptz, now()))
ON CONFLICT (task) DO UPDATE SET last_run_at = EXCLUDED.last_run_at
WHERE m.last_run_at <= EXCLUDED.last_run_at - $2::double precision * interval '1 second'
RETURNING task
"""

        # -- schema --------------------------------------------------------------------------------
        #: Versions applied; fails with undefined_table when Soniq was never set up.
        self.schema_versions = f"SELECT version FROM {n.migrations}"

        #: $1 version, $2 name.
        self.record_migration = (f"INSERT INTO {n.migrations} (version, name) "
                                 "VALUES ($1::integer, $2::text)")

        #: The statements that change jobs, without and with recording their events.
        self.plain = statements(n, events=False)
        self.logged = statements(n, events=True)
        #: The concurrency slots' statements (:mod:`.slots`).
        self.slots = SlotSql(n)
        #: The dedup keys' statements (:mod:`.keys`).
        self.keys = key_sql(n)
