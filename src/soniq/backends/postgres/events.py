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

Who reads the log is known twice, for two kinds of statement:

- the hot ones, finish and heartbeat (:mod:`.sql`), record only while :attr:`EventLog.recording`
  says a reader in *this process* reads (an attribute read per call; a feature turns it on with
  :meth:`EventLog.read`);
- the rare ones, cancel and rescue, record whichever process runs them (a cancel from the
  dashboard, a rescue before the worker's reader has started) while the *database* names a
  reader in ``soniq_event_readers``: a reader adds its row with :func:`reader_added` while it
  has something to read for (the webhook store: while an endpoint exists) and removes it with
  :func:`reader_removed`.

Readers take the rows with :func:`take` (deleting them: one reader today, the webhook store; a
second reader would need its own rows). Nothing here knows the readers; the readers know only
this module's SQL. Every function takes the instance's :class:`~.names.Names` (``n``): the log
lives in the instance's schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soniq.backends.postgres.names import Names

__all__ = ["LIFECYCLE_EVENTS", "EventLog", "expire", "job_events", "reader_added",
           "reader_removed", "take"]

#: The event kinds the statements that change jobs record.
LIFECYCLE_EVENTS = frozenset({"job.started", "job.done", "job.failed", "job.dead_letter",
                              "job.cancelled"})

#: A job event's payload, from the columns ``job_name``, ``queue`` and ``error`` (text).
_JOB_PAYLOAD = "json_build_object('job_name', job_name, 'queue', queue, 'error', error)"


def job_events(n: Names, source: str, *, if_read: bool = False) -> str:
    """The CTE (to follow another CTE: it starts with a comma) recording the job events of the
    query ``source`` as one log row (none when it has no event): its columns ``kind`` (NULL: no
    event but the start), ``job_id``, ``attempt``, ``at``, ``started_at`` (the attempt's
    ``job.started`` too; NULL: not), ``job_name``, ``queue``, ``error``. ``if_read``: only
    while ``soniq_event_readers`` names a reader."""
    return f""",
logged AS (
    INSERT INTO {n.events} (kinds, job_ids, attempts, ats, started_ats, payloads)
    SELECT array_agg(kind), array_agg(job_id), array_agg(attempt), array_agg(at),
           array_agg(started_at), array_agg({_JOB_PAYLOAD})
    FROM ({source}) AS s
    WHERE (kind IS NOT NULL OR started_at IS NOT NULL){f" AND {_read(n)}" if if_read else ""}
    HAVING count(*) > 0)"""


def _read(n: Names) -> str:
    """The condition under which a statement run by any process records: the database names a
    reader."""
    return f"EXISTS (SELECT 1 FROM {n.event_readers})"


def reader_added(n: Names, reader: str) -> str:
    """A CTE (``name AS (...)``, to join another statement's ``WITH``) naming ``reader`` (a
    name from code) in ``soniq_event_readers``."""
    return (f"reader AS (INSERT INTO {n.event_readers} (name) VALUES ('{reader}') "
            "ON CONFLICT (name) DO NOTHING)")


def reader_removed(n: Names, reader: str, *, unless: str) -> str:
    """A CTE removing ``reader`` from ``soniq_event_readers`` unless the condition ``unless``
    (SQL from code: the reader still has something to read for) holds."""
    return (f"reader AS (DELETE FROM {n.event_readers} WHERE name = '{reader}' "
            f"AND NOT ({unless}))")


def take(n: Names) -> str:
    """CTEs for a reader's statement (after ``WITH``). $1 how many log rows: the oldest rows no
    other transaction is taking (SKIP LOCKED; ``= ANY (ARRAY(...))`` evaluates the locking
    subquery once) are deleted (``taken``: their ``id`` and ``created_at``), and ``events`` has
    one row per element: ``log_id``, ``logged_at`` (the row's ``created_at``), ``kind``,
    ``job_id``, ``attempt``, ``at``, ``started_at``, ``payload``."""
    return f"""taken AS (
    DELETE FROM {n.events}
    WHERE id = ANY (ARRAY(SELECT id FROM {n.events} ORDER BY id LIMIT $1::integer
                          FOR UPDATE SKIP LOCKED))
    RETURNING id, created_at, kinds, job_ids, attempts, ats, started_ats, payloads),
events AS (
    SELECT t.id AS log_id, t.created_at AS logged_at, u.kind, u.job_id, u.attempt, u.at,
           u.started_at, u.payload
    FROM taken AS t
    CROSS JOIN LATERAL unnest(t.kinds, t.job_ids, t.attempts, t.ats, t.started_ats, t.payloads)
         AS u(kind, job_id, attempt, at, started_at, payload))"""


def expire(n: Names) -> str:
    """$1 before: deletes the log rows recorded before $1 (a reader's retention: rows nobody
    took)."""
    return f"DELETE FROM {n.events} WHERE created_at < $1::timestamptz"


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
