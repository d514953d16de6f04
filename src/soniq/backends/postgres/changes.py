"""The statements that change jobs and may record their events in the event log (:mod:`.events`):
finish, heartbeat, cancel and rescue.

Each comes in two variants, written out by :func:`statements` from whole fragments for one
schema's :class:`~.names.Names`; a backend builds both once (:class:`.sql.Sql`) and picks one per
call by reading ``EventLog.recording``. No statement is made by editing another one's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from soniq.backends.postgres.events import job_events
from soniq.backends.postgres.slots import FREED

if TYPE_CHECKING:
    from soniq.backends.postgres.names import Names

__all__ = ["Statements", "statements"]

# -- finish ----------------------------------------------------------------------------------------
# A QUEUED outcome (retry, snooze, shutdown) for a job with a cancel request ends it cancelled.
_REQUEUE = "(o.status = 'queued' AND NOT j.cancel_requested)"

#: Write a batch of outcomes in one statement, each fenced by status and lease. Parallel arrays:
#: $1 id, $2 lease_id, $3 status, $4 result (JSON text), $5 error (JSON text of one entry),
#: $6 run_at, $7 refund_attempt, $8 expires_at; $9 now (NULL: the database clock).
#: Returns ``returning`` for the rows whose lease still held. (id, lease) pairs must not repeat
#: within one call.
def _complete(n: Names, returning: str) -> str:
    return f"""
UPDATE {n.jobs} AS j
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
             f"j.started_at, o.status AS outcome, o.error, t.now, {FREED}")
_FINISH_EVENTS = f"""
    SELECT CASE outcome WHEN 'done' THEN 'job.done' WHEN 'dead_letter' THEN 'job.dead_letter'
                        WHEN 'cancelled' THEN 'job.cancelled'
                        WHEN 'queued' THEN CASE WHEN error IS NOT NULL THEN 'job.failed' END
           END AS kind,
           id AS job_id, attempt, now AS at, started_at, job_name, queue,
           {_error_text('error')} AS error
    FROM finished"""

# -- cancel ----------------------------------------------------------------------------------------
#: $1 id. A job that has not started (queued or waiting for dependencies) is cancelled
#: (releasing its dedup key); a running one gets a cancel request (its job.cancelled comes with
#: its outcome).
def _cancel(n: Names) -> str:
    return f"""
    UPDATE {n.jobs} AS j
    SET status = CASE WHEN status = 'processing' THEN status ELSE 'cancelled' END,
        finished_at = CASE WHEN status = 'processing' THEN finished_at ELSE now() END,
        updated_at = CASE WHEN status = 'processing' THEN updated_at ELSE now() END,
        cancel_requested = cancel_requested OR status = 'processing',
        dedup_key = NULL
    WHERE id = $1::uuid AND status IN ('waiting', 'queued', 'processing')
    RETURNING id, status, job_name, queue, attempts, finished_at, {FREED}"""


_CANCEL_EVENTS = """
    SELECT 'job.cancelled' AS kind, id AS job_id, attempts AS attempt, finished_at AS at,
           NULL::timestamptz AS started_at, job_name, queue, NULL::text AS error
    FROM changed WHERE status = 'cancelled'"""


# -- heartbeat -------------------------------------------------------------------------------------
#: $1 worker id, $2 now, $3 its job names (written only when the row is re-created). Refreshes
#: the heartbeat (re-creating a row the cleanup removed); the statement returns the worker's
#: running jobs that have a cancel request. Only last_heartbeat changes, and it is not indexed:
#: the update stays heap-only.
def _beat(n: Names) -> str:
    return f"""
    INSERT INTO {n.workers} AS w
        (id, hostname, pid, queues, concurrency, started_at, last_heartbeat, job_names)
    VALUES ($1::uuid, '', 0, NULL, 0,
            COALESCE($2::timestamptz, now()), COALESCE($2::timestamptz, now()), $3::text[])
    ON CONFLICT (id) DO UPDATE SET last_heartbeat = EXCLUDED.last_heartbeat"""


def _cancel_requested(n: Names) -> str:
    return f"""
SELECT id FROM {n.jobs}
WHERE worker_id = $1::uuid AND status = 'processing' AND cancel_requested
ORDER BY id
"""


#: ``job.started`` for the worker's running jobs: a job that runs longer than a heartbeat gets
#: its event then instead of with its outcome. Every beat records every running job; each event
#: is delivered once (a reader de-duplicates: the webhook delivery id is its digest).
def _beat_events(n: Names) -> str:
    return f"""
    SELECT NULL::text AS kind, id AS job_id, attempts AS attempt, started_at AS at, started_at,
           job_name, queue, NULL::text AS error
    FROM {n.jobs} WHERE worker_id = $1::uuid AND status = 'processing'"""


# -- rescue ----------------------------------------------------------------------------------------
_RESCUE_REQUEUE = "(NOT j.cancel_requested AND j.attempts < j.max_attempts)"


#: Give lost jobs back: parallel arrays $1 id, $2 lease_id, $3 error entry (JSON text); $4 now.
#: Queued again when attempts remain (the claim already counted the lost attempt), dead-lettered
#: on the last one, cancelled when cancel was requested.
def _rescue(n: Names) -> str:
    return f"""
UPDATE {n.jobs} AS j
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
RETURNING j.id, j.job_name, j.queue, j.attempts, j.status, o.error, {FREED}
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


# -- the two variants ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Statements:
    """The statements that change jobs, recording their events in the event log or not."""

    #: Parameters as :func:`_complete`; returns ``id`` per job whose lease held, with
    #: :data:`.slots.FREED`'s columns (as the cancel and the rescue do).
    complete_jobs: str
    #: $1 worker id, $2 now (NULL: the database clock), $3 job names (a re-created row's);
    #: returns the ids of the worker's running jobs with a cancel request.
    heartbeat: str
    #: $1 id; returns the new ``status`` (cancelled, or processing: a request) and ``woken`` when
    #: the cancel applied; a running job's worker gets a NOTIFY on ``Names.cancel_channel``.
    cancel_job: str
    #: Parameters as :func:`_rescue`; returns ``id`` per job given back.
    rescue_jobs: str


def statements(n: Names, *, events: bool) -> Statements:
    """The statements for the schema of ``n``, recording their events in the event log when
    ``events`` (see :mod:`.events`): the same text on every call, so each is prepared once per
    connection."""

    def log(source: str) -> str:
        return job_events(n, source) if events else ""

    return Statements(
        complete_jobs=(f"WITH finished AS ({_complete(n, _FINISHED)}){log(_FINISH_EVENTS)}\n"
                       "SELECT id, freed, freed_key FROM finished") if events
                      else _complete(n, f"j.id, {FREED}"),
        heartbeat=f"WITH beat AS ({_beat(n)}){log(_beat_events(n))}\n{_cancel_requested(n)}",
        # Rare, and run by processes that may read nothing (a cancel from the dashboard, a
        # rescue before the worker's reader started): they record while the database names a
        # reader, whichever process runs them.
        cancel_job=(f"WITH changed AS ({_cancel(n)})"
                    f"{job_events(n, _CANCEL_EVENTS, if_read=True)}\n"
                    f"SELECT status, CASE WHEN status = 'processing' "
                    f"THEN pg_notify('{n.cancel_channel}', id::text) END AS woken, freed, "
                    "freed_key\nFROM changed"),
        rescue_jobs=(f"WITH rescued AS ({_rescue(n)})"
                     f"{job_events(n, _RESCUE_EVENTS, if_read=True)}\n"
                     "SELECT id, freed, freed_key FROM rescued"),
    )
