"""The event log (``soniq_events``): what happened, recorded by the statements that made it
happen, for whoever reads it.

A row is the events one statement recorded, committed with the change they describe, as parallel
arrays with one element per event:

- ``kinds``: what happened -- the job lifecycle (:data:`LIFECYCLE_EVENTS`) today; workflow and
  queue events are meant to be recorded here too; NULL when the element records only a start;
- ``job_ids``: the job it happened to (NULL: the event is not about a job);
- ``attempts``: the attempt it happened in (NULL: not about an attempt);
- ``ats``: when it happened;
- ``started_ats``: when the attempt started, for an element that also records its
  ``job.started`` (NULL: it does not) -- a finish records an attempt's start and outcome in one
  element, half the elements of one per event (measured: one per event made the finish of 250
  jobs ~1 ms slower);
- ``payloads``: a JSON object with the rest (job events: ``job_name``, ``queue``, ``error``).

One row per statement rather than one per event: a finished batch of jobs costs one insert.

The core statements that change jobs (finish, heartbeat, cancel, rescue: :mod:`.sql`) record
their events only while :attr:`EventLog.recording` says someone reads them: a feature that
needs lifecycle events turns it on with :meth:`EventLog.read`, and takes the rows with
:data:`TAKE` (deleting them: one reader today, the webhook store; a second reader would need
its own rows). Nothing here knows the readers; the readers know only this module's SQL.
"""

from __future__ import annotations

__all__ = ["EXPIRE", "LIFECYCLE_EVENTS", "TAKE", "EventLog", "job_events"]

#: The event kinds the statements that change jobs record.
LIFECYCLE_EVENTS = frozenset({"job.started", "job.done", "job.failed", "job.dead_letter",
                              "job.cancelled"})

#: A job event's payload, from the columns ``job_name``, ``queue`` and ``error`` (text).
_JOB_PAYLOAD = "json_build_object('job_name', job_name, 'queue', queue, 'error', error)"



def job_events(source: str) -> str:
    """The CTE (to follow another CTE: it starts with a comma) recording the job events of the
    query ``source`` as one log row (none when it has no event): its columns ``kind`` (NULL: no
    event but the start), ``job_id``, ``attempt``, ``at``, ``started_at`` (the attempt's
    ``job.started`` too; NULL: not), ``job_name``, ``queue``, ``error``."""
    return f""",
logged AS (
    INSERT INTO soniq_events (kinds, job_ids, attempts, ats, started_ats, payloads)
    SELECT array_agg(kind), array_agg(job_id), array_agg(attempt), array_agg(at),
           array_agg(started_at), array_agg({_JOB_PAYLOAD})
    FROM ({source}) AS s
    WHERE kind IS NOT NULL OR started_at IS NOT NULL
    HAVING count(*) > 0)"""

#: CTEs for a reader's statement (after ``WITH``). $1 how many log rows: the oldest rows no
#: other transaction is taking (SKIP LOCKED; ``= ANY (ARRAY(...))`` evaluates the locking
#: subquery once) are deleted (``taken``: their ``id`` and ``created_at``), and ``events`` has
#: one row per element: ``log_id``, ``logged_at`` (the row's ``created_at``), ``kind``,
#: ``job_id``, ``attempt``, ``at``, ``started_at``, ``payload``.
TAKE = """taken AS (
    DELETE FROM soniq_events
    WHERE id = ANY (ARRAY(SELECT id FROM soniq_events ORDER BY id LIMIT $1::integer
                          FOR UPDATE SKIP LOCKED))
    RETURNING id, created_at, kinds, job_ids, attempts, ats, started_ats, payloads),
events AS (
    SELECT t.id AS log_id, t.created_at AS logged_at, u.kind, u.job_id, u.attempt, u.at,
           u.started_at, u.payload
    FROM taken AS t
    CROSS JOIN LATERAL unnest(t.kinds, t.job_ids, t.attempts, t.ats, t.started_ats, t.payloads)
         AS u(kind, job_id, attempt, at, started_at, payload))"""


#: $1 before: deletes the log rows recorded before $1 (a reader's retention: rows nobody took).
EXPIRE = "DELETE FROM soniq_events WHERE created_at < $1::timestamptz"


class EventLog:
    """``PostgresBackend.events``: whether the statements that change jobs record their events.

    Readers register by name; the log is written while any is registered. Reading
    :attr:`recording` is the hot path's only cost when nobody reads.
    """

    def __init__(self) -> None:
        self._readers: set[str] = set()
        #: Whether the finish, heartbeat, cancel and rescue statements record their events.
        self.recording = False

    def __repr__(self) -> str:
        return f"<EventLog readers={sorted(self._readers)}>"

    def read(self, reader: str, *, on: bool) -> None:
        """Start (``on``) or stop reading the log as ``reader``."""
        if on:
            self._readers.add(reader)
        else:
            self._readers.discard(reader)
        self.recording = bool(self._readers)
