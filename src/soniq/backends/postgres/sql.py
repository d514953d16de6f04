"""The SQL text the PostgreSQL adapter runs, one constant per statement.

Every value is a bind parameter; the only text put together here is fixed at import time. Tests
import these constants (``tests/backends/test_claim_plan.py`` EXPLAINs the claim statements), so
what is measured is exactly what runs.

JSON columns travel as text: parameters are ``$n::jsonb`` fed with ``str`` and results come back
as ``str`` (asyncpg's default for json/jsonb), so no connection needs a custom codec.

The statements that change jobs and may record their events in the event log (:mod:`.events`)
come in two variants, written out by :func:`statements` from whole fragments; a backend builds
both once and picks one per call by reading ``EventLog.recording``. No statement is made by
editing another one's text.
"""

from __future__ import annotations

from dataclasses import dataclass

from soniq.backends.base import JOB_COLUMNS
from soniq.backends.postgres.events import job_events

__all__ = [
    "ADOPT_CLAIMS", "ANALYZE_JOBS", "CANCEL_CHANNEL", "CHANNEL", "CLAIM_ALL_QUEUES",
    "CLAIM_MAINTENANCE", "CLAIM_ONE_QUEUE", "CLAIM_SOME_QUEUES", "CLOCK", "COPY_COLUMNS",
    "DATABASE_EXISTS", "DELETE_JOB", "GET_JOB", "INSERT_JOB", "INSERT_JOBS", "INSERT_UNIQUE_JOB",
    "LIST_JOBS", "LIST_WORKERS", "LOST_JOBS", "MIGRATION_LOCK", "MIGRATION_LOCK_KEY", "NOTIFY_DUE",
    "PAUSED_QUEUES", "PING", "PRUNE_JOBS", "QUEUE_STATS", "RECORD_MIGRATION", "REGISTER_WORKER",
    "REMOVE_SILENT_WORKERS", "SCHEMA_VERSIONS", "STATISTICS_STALE", "UNREGISTER_WORKER",
    "Statements", "claim", "statements",
]

#: The NOTIFY channel that wakes workers; the payload is the queue name.
CHANNEL = "soniq_jobs"
#: The NOTIFY channel that tells a running job's worker to cancel it; the payload is the job id.
CANCEL_CHANNEL = "soniq_cancel"

_COLUMNS = ", ".join(JOB_COLUMNS)

# -- enqueue ---------------------------------------------------------------------------------------
# A dedup hit must return the id of the queued row holding the key, atomically and under
# concurrency: ON CONFLICT ... DO UPDATE locks and returns that row (DO NOTHING would return
# nothing, and a follow-up SELECT could miss a row claimed in between). If the holder is being
# claimed, the insert waits for that commit; the claim released the key, so the insert then
# succeeds as a new job -- the same answer the memory backend gives.
_ON_DEDUP_HIT = (
    "ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL "
    "DO UPDATE SET dedup_key = EXCLUDED.dedup_key"
)

#: One job without a dedup key, one round trip (a plain INSERT: nothing to conflict with).
#: $1 id, $2 job_name, $3 queue, $4 priority, $5 args (JSON text), $6 max_attempts,
#: $7 scheduled_at (NULL: now). A due job wakes listeners on its queue.
INSERT_JOB = f"""
INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, max_attempts, scheduled_at)
VALUES ($1::uuid, $2::text, $3::text, $4::smallint, 'queued', $5::jsonb, $6::integer,
        COALESCE($7::timestamptz, now()))
RETURNING CASE WHEN scheduled_at <= now() THEN pg_notify('{CHANNEL}', queue) END AS woken
"""

#: One job with a dedup key ($8; other parameters as INSERT_JOB). Returns the job's id: the
#: existing one on a dedup hit. A new job that is due wakes listeners on its queue.
INSERT_UNIQUE_JOB = f"""
WITH inserted AS (
    INSERT INTO soniq_jobs
        (id, job_name, queue, priority, status, args, max_attempts, scheduled_at, dedup_key)
    VALUES ($1::uuid, $2::text, $3::text, $4::smallint, 'queued', $5::jsonb, $6::integer,
            COALESCE($7::timestamptz, now()), $8::text)
    {_ON_DEDUP_HIT}
    RETURNING id, queue, scheduled_at
)
SELECT id,
       CASE WHEN id = $1::uuid AND scheduled_at <= now()
            THEN pg_notify('{CHANNEL}', queue) END AS woken
FROM inserted
"""

#: Many jobs in one statement over parallel arrays (INSERT_UNIQUE_JOB's parameters), with
#: one NOTIFY per distinct due queue -- never one per row. Always returns one row: how many
#: queues were woken, and for rows carrying a dedup key, the id now holding each key (callers
#: map keys back to input positions; rows without a key keep the id they were given).
#: The arrays must not repeat a dedup key (ON CONFLICT cannot touch a row twice in one statement).
INSERT_JOBS = f"""
WITH inserted AS (
    INSERT INTO soniq_jobs
        (id, job_name, queue, priority, status, args, max_attempts, scheduled_at, dedup_key)
    SELECT new.id, new.job_name, new.queue, new.priority, 'queued', new.args::jsonb,
           new.max_attempts, COALESCE(new.scheduled_at, now()), new.dedup_key
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::text[], $6::integer[],
                $7::timestamptz[], $8::text[])
        AS new (id, job_name, queue, priority, args, max_attempts, scheduled_at, dedup_key)
    {_ON_DEDUP_HIT}
    RETURNING id, queue, scheduled_at, dedup_key
), woken AS (
    SELECT pg_notify('{CHANNEL}', due.queue)
    FROM (SELECT DISTINCT queue FROM inserted WHERE scheduled_at <= now()) AS due
)
SELECT (SELECT count(*) FROM woken) AS woken,
       array_agg(id) FILTER (WHERE dedup_key IS NOT NULL) AS dedup_ids,
       array_agg(dedup_key) FILTER (WHERE dedup_key IS NOT NULL) AS dedup_keys
FROM inserted
"""

#: The columns a bulk COPY fills (plus scheduled_at when the jobs carry a time); the rest take
#: their defaults, as INSERT_JOBS gives them.
COPY_COLUMNS = ("id", "job_name", "queue", "priority", "status", "args", "max_attempts")

#: After a COPY: wake listeners on each queue in $1 whose earliest job ($2, NULL: now) is due.
NOTIFY_DUE = f"""
SELECT count(pg_notify('{CHANNEL}', due.queue))
FROM unnest($1::text[], $2::timestamptz[]) AS due (queue, run_at)
WHERE due.run_at IS NULL OR due.run_at <= now()
"""

# -- claim -----------------------------------------------------------------------------------------
# One round trip claims a batch. The inner SELECT walks a partial index in exactly the ORDER BY's
# order and stops after $3 rows; SKIP LOCKED lets concurrent workers take disjoint batches.
# Releasing dedup_key keeps the "key only on queued rows" invariant (a CHECK constraint enforces
# it). $1 worker_id, $2 now (NULL: the database clock), $3 limit, $4 lease, $5 queue / queues.
#
# Each job's lease is derived from a claim key the worker sends ($4, new per claim) and the job's
# id: when the connection drops after the claim committed but before its rows arrived, the worker
# still knows the key and takes those jobs up with ADOPT_CLAIMS (otherwise they would sit
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
#: The columns of a :class:`~soniq.types.ClaimedJob`, in its order.
_CLAIMED = ("id::text, job_name, queue, priority, args, attempts, max_attempts, scheduled_at, "
            "created_at, lease_id::text")

_CLAIM = """
UPDATE soniq_jobs
SET status = 'processing',
    attempts = attempts + 1,
    lease_id = md5($4::text || id::text)::uuid,
    worker_id = $1::uuid,
    started_at = COALESCE($2::timestamptz, now()),
    updated_at = COALESCE($2::timestamptz, now()),
    dedup_key = NULL
WHERE id = ANY (ARRAY({candidates}))
  AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
RETURNING {claimed}
"""

#: The queues paused in soniq_queues: an init plan, read once per claim. A worker that knows of
#: paused queues claims with .queues instead, which does not walk their backlog.
PAUSED_QUEUES = "ARRAY(SELECT name FROM soniq_queues WHERE paused)"
# Written as containment, not "queue <> ALL (...)": the planner guesses an unknown array's "<> ALL"
# as nearly never true with few distinct queues and then sorts a Seq Scan instead of walking the
# index (2 ms -> 120 ms per claim at 200 000 rows); its guess for "NOT (... <@ ...)" is 99.5%.
_UNPAUSED = f"NOT (ARRAY[queue] <@ {PAUSED_QUEUES})"
_WALK = """
    SELECT id FROM soniq_jobs
    WHERE status = 'queued' AND scheduled_at <= COALESCE($2::timestamptz, now()){queue_filter}
    ORDER BY priority, scheduled_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
"""


def claim(candidates: str) -> str:
    """The claim of the ids ``candidates`` selects in claim order, locked SKIP LOCKED."""
    return _CLAIM.format(candidates=candidates, claimed=_CLAIMED)


#: Claim from every queue (served by soniq_jobs_claim_idx).
CLAIM_ALL_QUEUES = claim(_WALK.format(queue_filter=f" AND {_UNPAUSED}"))
#: Claim from the queue $5 (soniq_jobs_queue_claim_idx: an exact prefix; paused: a one-time filter).
CLAIM_ONE_QUEUE = claim(_WALK.format(
    queue_filter=f" AND queue = $5::text AND $5::text <> ALL ({PAUSED_QUEUES})"))
#: Claim from the queues in $5 (soniq_jobs_claim_idx in order, other queues filtered out).
CLAIM_SOME_QUEUES = claim(_WALK.format(
    queue_filter=f" AND queue = ANY($5::text[]) AND {_UNPAUSED}"))

#: The jobs of claims whose answer was lost: $1 worker id, $2 those claims' keys. (A scan: it
#: runs only after a connection was lost mid-claim.)
ADOPT_CLAIMS = f"""
SELECT {_CLAIMED} FROM soniq_jobs
WHERE worker_id = $1::uuid AND status = 'processing'
  AND EXISTS (SELECT 1 FROM unnest($2::text[]) AS claim (key)
              WHERE lease_id = md5(claim.key || id::text)::uuid)
"""

# -- finish ----------------------------------------------------------------------------------------
# A QUEUED outcome (retry, snooze, shutdown) for a job with a cancel request ends it cancelled.
_REQUEUE = "(o.status = 'queued' AND NOT j.cancel_requested)"

#: Write a batch of outcomes in one statement, each fenced by status and lease. Parallel arrays:
#: $1 id, $2 lease_id, $3 status, $4 result (JSON text), $5 error (JSON text of one entry),
#: $6 run_at, $7 refund_attempt, $8 expires_at; $9 now (NULL: the database clock).
#: Returns ``returning`` for the rows whose lease still held. (id, lease) pairs must not repeat
#: within one call.
def _complete(returning: str) -> str:
    return f"""
UPDATE soniq_jobs AS j
SET status = CASE WHEN {_REQUEUE} THEN 'queued'
                  WHEN o.status = 'queued' THEN 'cancelled'
                  ELSE o.status END,
    errors = CASE WHEN o.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(o.error::jsonb) END,
    attempts = CASE WHEN o.refund_attempt THEN j.attempts - 1 ELSE j.attempts END,
    lease_id = NULL,
    scheduled_at = CASE WHEN {_REQUEUE} THEN COALESCE(o.run_at, t.now) ELSE j.scheduled_at END,
    worker_id = CASE WHEN {_REQUEUE} THEN NULL ELSE j.worker_id END,
    result = CASE WHEN {_REQUEUE} THEN j.result ELSE o.result::jsonb END,
    finished_at = CASE WHEN {_REQUEUE} THEN j.finished_at ELSE t.now END,
    expires_at = CASE WHEN {_REQUEUE} THEN j.expires_at ELSE o.expires_at END,
    updated_at = t.now
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
            $7::boolean[], $8::timestamptz[])
        AS o (id, lease_id, status, result, error, run_at, refund_attempt, expires_at),
     (SELECT COALESCE($9::timestamptz, now()) AS now) AS t
WHERE j.id = o.id AND j.status = 'processing' AND j.lease_id = o.lease_id
RETURNING {returning}
"""


def _error_text(entry: str) -> str:
    """An error entry (JSON text: the finish's $5, the rescue's $3) as an event's ``error``."""
    return f"({entry}::jsonb ->> 'type') || ': ' || ({entry}::jsonb ->> 'message')"


#: A finished attempt's events: ``job.started`` (delivered once even when the heartbeat
#: recorded it too) and the event the executor reports for the outcome -- done, dead_letter,
#: cancelled, or failed for a retry (a QUEUED outcome with an error); a snooze or a job handed
#: back has none. Only outcomes whose lease held count.
_FINISHED = ("j.id, j.job_name, j.queue, j.attempts + o.refund_attempt::integer AS attempt, "
             "j.started_at, o.status AS outcome, o.error, t.now")
_FINISH_EVENTS = f"""
    SELECT CASE outcome WHEN 'done' THEN 'job.done' WHEN 'dead_letter' THEN 'job.dead_letter'
                        WHEN 'cancelled' THEN 'job.cancelled'
                        WHEN 'queued' THEN CASE WHEN error IS NOT NULL THEN 'job.failed' END
           END AS kind,
           id AS job_id, attempt, now AS at, started_at, job_name, queue,
           {_error_text('error')} AS error
    FROM finished"""

# -- reading and managing --------------------------------------------------------------------------
#: $1 id.
GET_JOB = f"SELECT {_COLUMNS} FROM soniq_jobs WHERE id = $1::uuid"

# Newest first: ids are UUIDv7, so id order is creation order.
#: $1 limit, $2 offset, then the filters (built by :func:`.where.where`).
LIST_JOBS = f"SELECT {_COLUMNS} FROM soniq_jobs{{where}} ORDER BY id DESC LIMIT $1 OFFSET $2"

#: Counts per queue; COLLATE "C" sorts like Python's str (and the memory backend), whatever the
#: database's collation.
QUEUE_STATS = """
SELECT queue,
       count(*) AS total,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'processing') AS processing,
       count(*) FILTER (WHERE status = 'done') AS done,
       count(*) FILTER (WHERE status = 'dead_letter') AS dead_letter,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled
FROM soniq_jobs
GROUP BY queue
ORDER BY queue COLLATE "C"
"""

#: $1 id. A waiting job is cancelled (releasing its dedup key); a running one gets a cancel
#: request (its job.cancelled comes with its outcome).
_CANCEL = """
    UPDATE soniq_jobs
    SET status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
        finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END,
        updated_at = CASE WHEN status = 'queued' THEN now() ELSE updated_at END,
        cancel_requested = cancel_requested OR status = 'processing',
        dedup_key = NULL
    WHERE id = $1::uuid AND status IN ('queued', 'processing')
    RETURNING id, status, job_name, queue, attempts, finished_at"""
_CANCEL_EVENTS = """
    SELECT 'job.cancelled' AS kind, id AS job_id, attempts AS attempt, finished_at AS at,
           NULL::timestamptz AS started_at, job_name, queue, NULL::text AS error
    FROM changed WHERE status = 'cancelled'"""

#: $1 id. Any state.
DELETE_JOB = "DELETE FROM soniq_jobs WHERE id = $1::uuid RETURNING id"

# -- workers and maintenance -----------------------------------------------------------------------
#: $1 id, $2 hostname, $3 pid, $4 queues (NULL: all), $5 concurrency, $6 now (NULL: db clock),
#: $7 the job names it registered.
REGISTER_WORKER = """
INSERT INTO soniq_workers AS w
    (id, hostname, pid, queues, concurrency, started_at, last_heartbeat, job_names)
VALUES ($1::uuid, $2::text, $3::integer, $4::text[], $5::integer,
        COALESCE($6::timestamptz, now()), COALESCE($6::timestamptz, now()), $7::text[])
ON CONFLICT (id) DO UPDATE
SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, queues = EXCLUDED.queues,
    concurrency = EXCLUDED.concurrency, started_at = EXCLUDED.started_at,
    last_heartbeat = EXCLUDED.last_heartbeat, job_names = EXCLUDED.job_names
"""

#: $1 worker id, $2 now, $3 its job names (written only when the row is re-created). Refreshes
#: the heartbeat (re-creating a row the cleanup removed); the statement returns the worker's
#: running jobs that have a cancel request. Only last_heartbeat changes, and it is not indexed:
#: the update stays heap-only.
_BEAT = """
    INSERT INTO soniq_workers AS w
        (id, hostname, pid, queues, concurrency, started_at, last_heartbeat, job_names)
    VALUES ($1::uuid, '', 0, NULL, 0,
            COALESCE($2::timestamptz, now()), COALESCE($2::timestamptz, now()), $3::text[])
    ON CONFLICT (id) DO UPDATE SET last_heartbeat = EXCLUDED.last_heartbeat"""
_CANCEL_REQUESTED = """
SELECT id FROM soniq_jobs
WHERE worker_id = $1::uuid AND status = 'processing' AND cancel_requested
ORDER BY id
"""
#: ``job.started`` for the worker's running jobs: a job that runs longer than a heartbeat gets
#: its event then instead of with its outcome. Every beat records every running job; each event
#: is delivered once (a reader de-duplicates: the webhook delivery id is its digest).
_BEAT_EVENTS = """
    SELECT NULL::text AS kind, id AS job_id, attempts AS attempt, started_at AS at, started_at,
           job_name, queue, NULL::text AS error
    FROM soniq_jobs WHERE worker_id = $1::uuid AND status = 'processing'"""

#: True when soniq_jobs changed a lot since its statistics were gathered, or never had any: the
#: threshold of autovacuum's own analyze (1 000 rows + 10% of the table). Without statistics the
#: planner guesses a handful of queued rows and sorts the whole backlog on every claim (40 ms
#: instead of 1 ms per claim at 100 000 queued rows, measured here).
STATISTICS_STALE = """
SELECT s.n_mod_since_analyze >= 1000 + 0.1 * GREATEST(c.reltuples, 0)
FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
WHERE s.relid = 'soniq_jobs'::regclass
"""

ANALYZE_JOBS = "ANALYZE soniq_jobs"

#: $1 worker id.
UNREGISTER_WORKER = "DELETE FROM soniq_workers WHERE id = $1::uuid"

LIST_WORKERS = """
SELECT id, hostname, pid, queues, concurrency, started_at, last_heartbeat, job_names
FROM soniq_workers ORDER BY id
"""

#: $1 cutoff: running jobs whose worker is gone or silent since before it. Rows being written
#: right now are skipped (their worker is evidently alive); the rest are locked until the rescue
#: commits.
LOST_JOBS = """
SELECT j.id, j.lease_id, j.worker_id, j.attempts
FROM soniq_jobs AS j
WHERE j.status = 'processing'
  AND NOT EXISTS (SELECT 1 FROM soniq_workers AS w
                  WHERE w.id = j.worker_id AND w.last_heartbeat >= $1::timestamptz)
ORDER BY j.id
FOR UPDATE OF j SKIP LOCKED
"""

_RESCUE_REQUEUE = "(NOT j.cancel_requested AND j.attempts < j.max_attempts)"

#: Give lost jobs back: parallel arrays $1 id, $2 lease_id, $3 error entry (JSON text); $4 now.
#: Queued again when attempts remain (the claim already counted the lost attempt), dead-lettered
#: on the last one, cancelled when cancel was requested.
_RESCUE = f"""
UPDATE soniq_jobs AS j
SET status = CASE WHEN j.cancel_requested THEN 'cancelled'
                  WHEN j.attempts >= j.max_attempts THEN 'dead_letter'
                  ELSE 'queued' END,
    errors = j.errors || jsonb_build_array(o.error::jsonb),
    lease_id = NULL,
    scheduled_at = CASE WHEN {_RESCUE_REQUEUE} THEN $4::timestamptz ELSE j.scheduled_at END,
    worker_id = CASE WHEN {_RESCUE_REQUEUE} THEN NULL ELSE j.worker_id END,
    finished_at = CASE WHEN {_RESCUE_REQUEUE} THEN j.finished_at ELSE $4::timestamptz END,
    updated_at = $4::timestamptz
FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS o (id, lease_id, error)
WHERE j.id = o.id AND j.status = 'processing' AND j.lease_id = o.lease_id
RETURNING j.id, j.job_name, j.queue, j.attempts, j.status, o.error
"""
#: The events of what the rescue decided -- the events a worker reports for those outcomes:
#: failed for a job queued again, dead_letter, or cancelled.
_RESCUE_EVENTS = f"""
    SELECT CASE status WHEN 'queued' THEN 'job.failed' WHEN 'dead_letter' THEN 'job.dead_letter'
                       WHEN 'cancelled' THEN 'job.cancelled' END AS kind,
           id AS job_id, attempts AS attempt, $4::timestamptz AS at,
           NULL::timestamptz AS started_at, job_name, queue,
           CASE WHEN status <> 'cancelled' THEN {_error_text('error')} END AS error
    FROM rescued"""

#: $1 cutoff.
REMOVE_SILENT_WORKERS = "DELETE FROM soniq_workers WHERE last_heartbeat < $1::timestamptz"

#: The LISTEN connection's keepalive.
PING = "SELECT 1"

#: $1 now (NULL: the database clock).
CLOCK = "SELECT COALESCE($1::timestamptz, now())"

#: $1 now (NULL: the database clock), $2 batch size. Deletes one batch of expired done/cancelled
#: jobs (dead letters stay for inspection); callers repeat until a batch comes back short, so no
#: transaction holds many row locks. ANY(ARRAY(...)) keeps the delete a primary-key lookup (see
#: the claim).
PRUNE_JOBS = """
DELETE FROM soniq_jobs
WHERE id = ANY (ARRAY(
    SELECT id FROM soniq_jobs
    WHERE expires_at < COALESCE($1::timestamptz, now()) AND status IN ('done', 'cancelled')
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
"""

#: $1 task, $2 interval seconds, $3 now (NULL: the database clock). Returns a row only for the
#: caller that moved the round forward: concurrent callers queue on the row lock and then see
#: the fresh last_run_at.
CLAIM_MAINTENANCE = """
INSERT INTO soniq_maintenance AS m (task, last_run_at)
VALUES ($1::text, COALESCE($3::timestamptz, now()))
ON CONFLICT (task) DO UPDATE SET last_run_at = EXCLUDED.last_run_at
WHERE m.last_run_at <= EXCLUDED.last_run_at - $2::double precision * interval '1 second'
RETURNING task
"""

# -- schema ----------------------------------------------------------------------------------------
#: Versions applied; fails with undefined_table when Soniq was never set up.
SCHEMA_VERSIONS = "SELECT version FROM soniq_migrations"

#: $1 version, $2 name.
RECORD_MIGRATION = "INSERT INTO soniq_migrations (version, name) VALUES ($1::integer, $2::text)"

#: Advisory lock that serialises concurrent migrate() calls on one database, held by a transaction
#: open for the whole run: transaction-scoped, so it also works through PgBouncer's transaction
#: pooling, where a session lock would stay behind on whichever server connection took it. The
#: key is b"soniq-mg" read as a big-endian int64; any fixed value works, it only has to be one no
#: other tool is likely to pick.
MIGRATION_LOCK_KEY = int.from_bytes(b"soniq-mg", "big", signed=True)
#: $1 key.
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock($1::bigint)"

#: $1 database name (asked on the maintenance database before CREATE DATABASE).
DATABASE_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1::text)"


# -- the statements that may record events ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Statements:
    """The statements that change jobs, recording their events in the event log or not."""

    #: Parameters as :func:`_complete`; returns ``id`` per job whose lease held.
    complete_jobs: str
    #: $1 worker id, $2 now (NULL: the database clock), $3 job names (a re-created row's);
    #: returns the ids of the worker's running jobs with a cancel request.
    heartbeat: str
    #: $1 id; returns the new ``status`` (cancelled, or processing: a request) and ``woken`` when
    #: the cancel applied; a running job's worker gets a NOTIFY on CANCEL_CHANNEL.
    cancel_job: str
    #: Parameters as :data:`_RESCUE`; returns ``id`` per job given back.
    rescue_jobs: str


def statements(*, events: bool) -> Statements:
    """The statements, recording their events in the event log when ``events`` (see
    :mod:`.events`): the same text on every call, so each is prepared once per connection."""

    def log(source: str) -> str:
        return job_events(source) if events else ""

    return Statements(
        complete_jobs=(f"WITH finished AS ({_complete(_FINISHED)}){log(_FINISH_EVENTS)}\n"
                       "SELECT id FROM finished") if events else _complete("j.id"),
        heartbeat=f"WITH beat AS ({_BEAT}){log(_BEAT_EVENTS)}\n{_CANCEL_REQUESTED}",
        # Rare, and run by processes that may read nothing (a cancel from the dashboard, a
        # rescue before the worker's reader started): they record while the database names a
        # reader, whichever process runs them.
        cancel_job=(f"WITH changed AS ({_CANCEL}){job_events(_CANCEL_EVENTS, if_read=True)}\n"
                    f"SELECT status, CASE WHEN status = 'processing' "
                    f"THEN pg_notify('{CANCEL_CHANNEL}', id::text) END AS woken\nFROM changed"),
        rescue_jobs=(f"WITH rescued AS ({_RESCUE}){job_events(_RESCUE_EVENTS, if_read=True)}\n"
                     "SELECT id FROM rescued"),
    )
