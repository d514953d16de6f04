"""The SQLite adapter's SQL text and value encodings.

Owns every statement the adapter sends, the timestamp format, and the splitting of migration
files into statements. Values are always bind parameters; the only text spliced into SQL is
constants from this module and ``?`` placeholders counted from the input.

Timestamps are stored as TEXT in one fixed-width UTC form, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``
(27 characters, microseconds always present). Fixed width and a fixed zone make text order equal
time order, so ``scheduled_at <= ?`` and the claim index's ``ORDER BY`` work on the text; the
values read well in the ``sqlite3`` shell and SQLite's own date functions accept them.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from soniq.backends.base import JOB_COLUMNS, job_record
from soniq.backends.dependencies import edges_of, failure_policy
from soniq.errors import ValidationError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from soniq.types import JobRecord, NewJob

__all__ = [
    "CANCEL",
    "CANCEL_REQUESTS",
    "CLAIMED_COLUMNS",
    "CLAIMED_SELECT",
    "CLAIM_MAINTENANCE",
    "COMPLETE",
    "DEAD_LETTER_UNKNOWN",
    "DELETE",
    "HEARTBEAT",
    "INSERT_JOB",
    "JOB_SELECT",
    "LIST_WORKERS",
    "LOST_JOBS",
    "PARK",
    "PRUNE",
    "PRUNE_CANCELLED",
    "PRUNE_AUDIT",
    "PRUNE_BUCKETS",
    "PRUNE_SLOTS",
    "QUEUE_STATS",
    "REGISTER_WORKER",
    "REMOVE_SILENT_WORKERS",
    "RESCUE",
    "TIMESTAMP_COLUMNS",
    "UNKNOWN_JOBS",
    "UNREGISTER_WORKER",
    "claim_sql",
    "claim_statement",
    "from_db",
    "insert_params",
    "placeholders",
    "split_statements",
    "to_db",
    "unknown_filter",
]

#: Job columns that hold timestamps (converted to aware datetimes when read).
TIMESTAMP_COLUMNS = frozenset(
    {"scheduled_at", "created_at", "updated_at", "started_at", "finished_at", "expires_at"}
)


def to_db(value: datetime) -> str:
    """An aware datetime as stored text (see the module docstring)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"naive datetime {value.isoformat()} cannot be stored; pass a timezone-aware one"
        )
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def from_db(text: str) -> datetime:
    """Stored text back to an aware UTC datetime."""
    return datetime.fromisoformat(text)


def placeholders(count: int) -> str:
    """``?, ?, ...`` for an ``IN (...)`` list of ``count`` bind parameters."""
    return ", ".join("?" * count)


def split_statements(script: str) -> list[str]:
    """Split a migration file into complete statements (``;`` inside strings, comments and
    trigger bodies does not end a statement). Each statement then runs on its own, inside the
    migration's transaction: ``executescript`` would commit it early."""
    statements = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if _has_code(pending):
                statements.append(pending.strip())
            pending = ""
    if _has_code(pending):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending[:80]!r}")
    return statements


# A quoted string or identifier (kept), or a comment (dropped), for _has_code.
_QUOTED_OR_COMMENT = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|--[^\n]*|/\*.*?(?:\*/|$)""",
    re.DOTALL,
)


def _has_code(text: str) -> bool:
    """True when ``text`` holds more than whitespace, comments and semicolons."""
    bare = _QUOTED_OR_COMMENT.sub(
        lambda match: "" if match[0].startswith(("--", "/*")) else "x", text)
    return bool(bare.strip(" \t\r\n;"))


_COLUMNS = ", ".join(JOB_COLUMNS)

JOB_SELECT = f"SELECT {_COLUMNS} FROM soniq_jobs"

INSERT_JOB = (
    "INSERT INTO soniq_jobs (id, job_name, queue, priority, status, args, attempts, "
    "max_attempts, scheduled_at, created_at, updated_at, errors, dedup_key, concurrency_key, "
    "hold, rate_key, waiting_on, on_dependency_failure, workflow_id, step_name) "
    "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, '[]', ?, ?, ?, ?, ?, ?, ?, ?)"
    # (a job with a dedup key comes here only after it took its key: .keys)
)



def insert_params(job: NewJob, now: str, hold: str | None, *,
                  dedup_key: str | None) -> tuple[Any, ...]:
    """``INSERT_JOB``'s parameters for ``job`` (``now``: stored text; ``hold``: the slot
    decision of :func:`.slots.admit`). A job with dependencies is stored ``waiting`` on all of
    them (:func:`.dependencies.link` counts off those already ended)."""
    edges = edges_of(job)
    return (job.id, job.job_name, job.queue, job.priority, "waiting" if edges else "queued",
            job.args, job.max_attempts,
            now if job.scheduled_at is None else to_db(job.scheduled_at), now, now, dedup_key,
            job.concurrency_key, hold, job.rate_key, len(edges) if edges else None,
            failure_policy(job), job.workflow_id, job.step_name)


#: A random (version 4) UUID per row, built in SQL so one UPDATE can lease many rows.
_NEW_LEASE = (
    "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || "
    "substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) || "
    "substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))"
)

CLAIMED_COLUMNS = (
    "id", "job_name", "queue", "priority", "args", "attempts", "max_attempts", "scheduled_at",
    "created_at", "lease_id", "concurrency_key", "has_dependencies", "workflow_id", "checkpoint",
)
#: What a claim returns, in ``CLAIMED_COLUMNS`` order; ``waiting_on`` stands for
#: ``has_dependencies`` (not NULL: it has dependencies). ``waiting_on IS NOT NULL`` itself comes
#: back true for every row in an UPDATE's RETURNING on SQLite 3.40.
CLAIMED_SELECT = ", ".join("waiting_on" if column == "has_dependencies" else column
                           for column in CLAIMED_COLUMNS)


def unknown_filter(count: int) -> str:
    """`` AND job_name NOT IN (?, ...)`` for the ``count`` job names a worker met and did not
    register (nothing when there are none: the usual claim is unchanged)."""
    return f" AND job_name NOT IN ({placeholders(count)})" if count else ""


def claim_sql(queue_count: int | None, unknown_count: int = 0) -> str:
    """The plain claim: one UPDATE over the due rows, in claim order, returning what the worker
    needs.

    ``status = 'queued' AND hold IS NULL AND rate_key IS NULL`` is written literally (not bound)
    so the planner can use the partial indexes (parked and rate-limited jobs are not in them).
    One queue reads its own prefix of ``soniq_jobs_queue_claim``. Several queues are filtered as
    ``+queue``: the unary plus keeps the planner off ``(queue, status)``, which would sort those
    queues' whole backlog on every claim (13-22 ms per claim of 250 at 100 000 queued rows,
    against about 2 ms walking ``soniq_jobs_claim`` in order). Queues paused or gated (a limit
    set) in ``soniq_queues`` are skipped (a subquery evaluated once per statement, read under
    the same write lock as the update, so a setting committed before the claim is always seen);
    gated queues are claimed through :mod:`.gates`.
    Parameters: worker_id, started_at, updated_at, now, *queues, *unknown job names, limit.
    """
    if queue_count is None:
        queue_filter = ""
    elif queue_count == 1:
        queue_filter = " AND queue = ?"
    else:
        queue_filter = f" AND +queue IN ({placeholders(queue_count)})"
    return claim_statement(
        f" AND rate_key IS NULL{queue_filter}{unknown_filter(unknown_count)} "
        "AND queue NOT IN (SELECT name FROM soniq_queues "
        "WHERE paused OR concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL)")


def claim_statement(filters: str) -> str:
    """A claim of the due, unparked rows that also match ``filters`` (SQL text starting with
    `` AND``), in claim order. Parameters: worker_id, started_at, updated_at, now, the filters'
    own, limit."""
    return (
        f"UPDATE soniq_jobs SET status = 'processing', attempts = attempts + 1, "
        f"lease_id = {_NEW_LEASE}, worker_id = ?, started_at = ?, updated_at = ?, "
        f"dedup_key = NULL "
        f"WHERE id IN (SELECT id FROM soniq_jobs WHERE status = 'queued' AND hold IS NULL "
        f"AND scheduled_at <= ?{filters} "
        f"ORDER BY priority, scheduled_at, id LIMIT ?) "
        f"RETURNING {CLAIMED_SELECT}"
    )


# The errors array to append to. SQLite does not check JSON, and one row whose errors were
# overwritten by hand with something that is not an array must not fail every outcome in its batch
# ("malformed JSON") forever: that value is kept as the first element of a fresh array.
_ERRORS = (
    "CASE WHEN json_valid(soniq_jobs.errors) AND json_type(soniq_jobs.errors) = 'array' "
    "THEN soniq_jobs.errors ELSE json_array(CAST(soniq_jobs.errors AS TEXT)) END"
)

#: What a changed row tells the slot hand-over (:func:`.slots.released`: the first four) and its
#: dependents (:func:`.dependencies.ended`: status, id, has_dependents); the last columns of
#: every statement that may end jobs.
_ENDING_COLUMNS = ("soniq_jobs.job_name, soniq_jobs.concurrency_key, soniq_jobs.hold, "
                 "soniq_jobs.status, soniq_jobs.id, soniq_jobs.has_dependents")

# A QUEUED outcome (retry, snooze, shutdown) for a job with a cancel request ends it cancelled.
_REQUEUE = "(o.status = 'queued' AND NOT soniq_jobs.cancel_requested)"

#: Write a batch of outcomes in one statement. ``:outcomes`` is a JSON array of objects
#: (id, lease_id, status, result, error, run_at, refund, expires_at); ``:now`` is a timestamp.
#: The lease fence is in the join, so a lost race simply matches no row. Returns each changed
#: row's id, rate_key and slot columns.
COMPLETE = f"""
UPDATE soniq_jobs SET
    status = CASE WHEN {_REQUEUE} THEN 'queued'
                  WHEN o.status = 'queued' THEN 'cancelled'
                  ELSE o.status END,
    updated_at = :now,
    lease_id = NULL,
    errors = CASE WHEN o.error IS NULL THEN soniq_jobs.errors
                  ELSE json_insert({_ERRORS}, '$[#]', json(o.error)) END,
    attempts = soniq_jobs.attempts - o.refund,
    scheduled_at = CASE WHEN {_REQUEUE} THEN coalesce(o.run_at, :now)
                        ELSE soniq_jobs.scheduled_at END,
    worker_id = CASE WHEN {_REQUEUE} THEN NULL ELSE soniq_jobs.worker_id END,
    result = CASE WHEN {_REQUEUE} THEN soniq_jobs.result ELSE o.result END,
    finished_at = CASE WHEN {_REQUEUE} THEN soniq_jobs.finished_at ELSE :now END,
    expires_at = CASE WHEN {_REQUEUE} THEN soniq_jobs.expires_at ELSE o.expires_at END
FROM (
    SELECT json_extract(value, '$.id') AS id,
           json_extract(value, '$.lease_id') AS lease_id,
           json_extract(value, '$.status') AS status,
           json_extract(value, '$.result') AS result,
           json_extract(value, '$.error') AS error,
           json_extract(value, '$.run_at') AS run_at,
           json_extract(value, '$.refund') AS refund,
           json_extract(value, '$.expires_at') AS expires_at
    FROM json_each(:outcomes)
) AS o
WHERE soniq_jobs.id = o.id AND soniq_jobs.status = 'processing'
  AND soniq_jobs.lease_id = o.lease_id
RETURNING soniq_jobs.id, soniq_jobs.rate_key, {_ENDING_COLUMNS}
"""

#: A queue's counts in the order of ``base.STATUSES``.
QUEUE_STATS = (
    "SELECT queue, sum(status = 'waiting'), sum(status = 'queued'), sum(status = 'processing'), "
    "sum(status = 'done'), sum(status = 'dead_letter'), sum(status = 'cancelled') "
    "FROM soniq_jobs GROUP BY queue ORDER BY queue"
)

#: now, now, id. A job not started yet (waiting or queued) is cancelled (releasing its dedup
#: key); a running one gets a cancel request that its worker sees at the next heartbeat. Returns
#: a row when either applied.
CANCEL = f"""
UPDATE soniq_jobs SET
    status = CASE WHEN status IN ('waiting', 'queued') THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN status IN ('waiting', 'queued') THEN ? ELSE finished_at END,
    updated_at = CASE WHEN status IN ('waiting', 'queued') THEN ? ELSE updated_at END,
    cancel_requested = cancel_requested OR status = 'processing',
    dedup_key = NULL
WHERE id = ? AND status IN ('waiting', 'queued', 'processing')
RETURNING status, {_ENDING_COLUMNS}
"""

#: id. Returns the row's slot columns, its status before the delete as "deleted" when it had not
#: finished (waiting, queued or processing: a failure for its dependents) and as "finished"
#: otherwise (it holds no slot, and its dependents were settled when it ended).
DELETE = """
DELETE FROM soniq_jobs WHERE id = ?
RETURNING job_name, concurrency_key, hold,
          CASE WHEN status IN ('waiting', 'queued', 'processing') THEN 'deleted'
               ELSE 'finished' END,
          id, has_dependents
"""

#: id, lease_id, concurrency key, now. A claimed job enqueued without its key, back to the
#: queue parked with the key and its attempt refunded (then it may take a slot at once).
PARK = """
UPDATE soniq_jobs SET status = 'queued', attempts = attempts - 1, lease_id = NULL,
    worker_id = NULL, scheduled_at = ?4, updated_at = ?4, concurrency_key = ?3, hold = 'slot'
WHERE id = ?1 AND status = 'processing' AND lease_id = ?2 AND concurrency_key IS NULL
RETURNING job_name
"""

# -- workers and maintenance -----------------------------------------------------------------------
#: id, hostname, pid, queues (JSON text or NULL: all), concurrency, now, job names (JSON text).
REGISTER_WORKER = """
INSERT INTO soniq_workers (id, hostname, pid, queues, concurrency, started_at, last_heartbeat,
                           job_names)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)
ON CONFLICT (id) DO UPDATE
SET hostname = excluded.hostname, pid = excluded.pid, queues = excluded.queues,
    concurrency = excluded.concurrency, started_at = excluded.started_at,
    last_heartbeat = excluded.last_heartbeat, job_names = excluded.job_names
"""

#: id, now, job names (JSON text). Refreshes the heartbeat, re-creating a row the cleanup removed.
HEARTBEAT = """
INSERT INTO soniq_workers (id, hostname, pid, queues, concurrency, started_at, last_heartbeat,
                           job_names)
VALUES (?1, '', 0, NULL, 0, ?2, ?2, ?3)
ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat
"""

#: worker id. Its running jobs that have a cancel request.
CANCEL_REQUESTS = (
    "SELECT id FROM soniq_jobs WHERE worker_id = ? AND status = 'processing' "
    "AND cancel_requested ORDER BY id"
)

UNREGISTER_WORKER = "DELETE FROM soniq_workers WHERE id = ?"

LIST_WORKERS = (
    "SELECT id, hostname, pid, queues, concurrency, started_at, last_heartbeat, job_names "
    "FROM soniq_workers ORDER BY id"
)

#: cutoff. Running jobs whose worker is gone or silent since before it. Unordered, so the planner
#: reads the small processing-only index instead of walking every row in id order.
LOST_JOBS = """
SELECT j.id, j.worker_id, j.attempts FROM soniq_jobs AS j
WHERE j.status = 'processing'
  AND NOT EXISTS (SELECT 1 FROM soniq_workers AS w
                  WHERE w.id = j.worker_id AND w.last_heartbeat >= ?)
"""

_RESCUE_REQUEUE = (
    "(NOT soniq_jobs.cancel_requested AND soniq_jobs.attempts < soniq_jobs.max_attempts)"
)

#: Give lost jobs back. ``:lost`` is a JSON array of {id, error (JSON text)}; ``:now``.
#: Queued again when attempts remain (the claim already counted the lost attempt), dead-lettered
#: on the last one, cancelled when cancel was requested.
def _entries(param: str) -> str:
    """The rows ``o (id, error)`` of the JSON array ``:param`` of ``{id, error}`` objects."""
    return (f"FROM (SELECT json_extract(value, '$.id') AS id, "
            f"json_extract(value, '$.error') AS error FROM json_each(:{param})) AS o")


RESCUE = f"""
UPDATE soniq_jobs SET
    status = CASE WHEN soniq_jobs.cancel_requested THEN 'cancelled'
                  WHEN soniq_jobs.attempts >= soniq_jobs.max_attempts THEN 'dead_letter'
                  ELSE 'queued' END,
    errors = json_insert({_ERRORS}, '$[#]', json(o.error)),
    lease_id = NULL,
    scheduled_at = CASE WHEN {_RESCUE_REQUEUE} THEN :now ELSE soniq_jobs.scheduled_at END,
    worker_id = CASE WHEN {_RESCUE_REQUEUE} THEN NULL ELSE soniq_jobs.worker_id END,
    finished_at = CASE WHEN {_RESCUE_REQUEUE} THEN soniq_jobs.finished_at ELSE :now END,
    updated_at = :now
{_entries('lost')}
WHERE soniq_jobs.id = o.id AND soniq_jobs.status = 'processing'
RETURNING soniq_jobs.id, {_ENDING_COLUMNS}
"""

#: cutoff, known job names (a JSON array): queued jobs due since the cutoff that no live worker
#: knows (the cleanup dead-letters them: unknown_job_grace).
UNKNOWN_JOBS = """
SELECT id, job_name, attempts FROM soniq_jobs
WHERE status = 'queued' AND scheduled_at <= ?
  AND job_name NOT IN (SELECT value FROM json_each(?))
"""

#: :now, :ended (a JSON array of {id, error}): those jobs dead-lettered if still queued.
DEAD_LETTER_UNKNOWN = f"""
UPDATE soniq_jobs SET status = 'dead_letter',
    errors = json_insert({_ERRORS}, '$[#]', json(o.error)),
    finished_at = :now, updated_at = :now
{_entries('ended')}
WHERE soniq_jobs.id = o.id AND soniq_jobs.status = 'queued'
RETURNING soniq_jobs.id, {_ENDING_COLUMNS}
"""

#: cutoff.
REMOVE_SILENT_WORKERS = "DELETE FROM soniq_workers WHERE last_heartbeat < ?"

#: now, batch size. One batch of expired done/cancelled jobs (dead letters stay for inspection),
#: except a dependency whose dependents have not all finished (they read its result); the caller
#: repeats until a batch comes back short, so claims can slip in between batches.
_STILL_NEEDED = """NOT (j.has_dependents AND EXISTS (
          SELECT 1 FROM soniq_dependencies AS d JOIN soniq_jobs AS w ON w.id = d.dependent
          WHERE d.dependency = j.id AND w.status IN ('waiting', 'queued', 'processing')))"""

PRUNE = f"""
DELETE FROM soniq_jobs WHERE id IN (
    SELECT j.id FROM soniq_jobs AS j
    WHERE j.expires_at < ? AND j.status IN ('done', 'cancelled') AND {_STILL_NEEDED}
    LIMIT ?
)
RETURNING id
"""

#: cutoff, batch size. Jobs cancelled before they started (no expires_at) that finished before
#: cutoff (now - result_ttl), like PRUNE.
PRUNE_CANCELLED = f"""
DELETE FROM soniq_jobs WHERE id IN (
    SELECT j.id FROM soniq_jobs AS j
    WHERE j.status = 'cancelled' AND j.expires_at IS NULL AND j.finished_at < ?
      AND {_STILL_NEEDED}
    LIMIT ?
)
RETURNING id
"""

#: batch size. One batch of idle slot rows: none taken, no parked job (a key's next insert
#: creates its row again). Like every write here, under the file's write lock: no insert takes
#: the slot in between.
PRUNE_SLOTS = """
DELETE FROM soniq_slots WHERE (job_name, key) IN (
    SELECT s.job_name, s.key FROM soniq_slots AS s
    WHERE s.active = 0
      AND NOT EXISTS (SELECT 1 FROM soniq_jobs AS j
                      WHERE j.job_name = s.job_name AND j.concurrency_key = s.key
                        AND j.status = 'queued' AND j.hold = 'slot')
    LIMIT ?1
)
RETURNING 1
"""

#: now, stale (now - the longest rate period), batch size. One batch of rate buckets that are
#: full again (refilled before stale, or never), not held, and whose key has no queued
#: rate-limited job (``soniq_jobs_rated``): a missing bucket is a full one.
PRUNE_BUCKETS = """
DELETE FROM soniq_rate_buckets WHERE (job_name, key) IN (
    SELECT b.job_name, b.key FROM soniq_rate_buckets AS b
    WHERE (b.refilled_at IS NULL OR b.refilled_at < ?2)
      AND (b.blocked_until IS NULL OR b.blocked_until <= ?1)
      AND NOT EXISTS (SELECT 1 FROM soniq_jobs AS j
                      WHERE j.job_name = b.job_name AND j.rate_key = b.key
                        AND j.status = 'queued' AND j.hold IS NULL)
    LIMIT ?3
)
RETURNING 1
"""

#: cutoff, batch size. One batch of audit entries recorded before the cutoff.
PRUNE_AUDIT = """
DELETE FROM soniq_audit WHERE id IN (SELECT id FROM soniq_audit WHERE at < ?1 LIMIT ?2)
RETURNING id
"""

#: task, now, cutoff (now - interval). Returns a row only for the caller that moved the round
#: forward; the upsert is one statement under the file's write lock, so exactly one caller wins.
CLAIM_MAINTENANCE = """
INSERT INTO soniq_maintenance (task, last_run_at) VALUES (?, ?)
ON CONFLICT (task) DO UPDATE SET last_run_at = excluded.last_run_at
WHERE soniq_maintenance.last_run_at <= ?
RETURNING task
"""


def job_row(row: Sequence[Any]) -> JobRecord:
    """A jobs-table row (``JOB_COLUMNS`` order, SQLite text timestamps) as the public record."""
    values = dict(zip(JOB_COLUMNS, row, strict=True))
    for column in TIMESTAMP_COLUMNS:
        if values[column] is not None:
            values[column] = from_db(values[column])
    return job_record(values)
