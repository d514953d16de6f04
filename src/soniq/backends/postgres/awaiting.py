"""The await store on PostgreSQL (:class:`~soniq.backends.awaiting.AwaitStore`): the waiter's
mark sets ``awaited`` on the row (migration 0018), and the triggers of that migration send the
ids of awaited jobs that ended on the schema's awaited channel, in the ending transaction; a
subscription is one LISTEN connection (:func:`.listener.subscribe`) on ``listen_url`` when set.
Ends of jobs nobody marked send nothing."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from soniq.backends._bridge import call
from soniq.backends.awaiting import AWAITED_CHANNEL
from soniq.backends.postgres import listener
from soniq.backends.postgres.errors import Translator

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from soniq.backends.postgres.names import Names

__all__ = ["PostgresAwaitStore"]


class _Sql:
    """This store's statement for one schema (:func:`_sql`)."""

    def __init__(self, n: Names) -> None:
        #: $1 id. Only a job that has not ended is flagged, once (no write when already set);
        #: ``updated_at`` stays: flagging is not a change of the job. The flag's row lock makes a
        #: claim running at that moment skip a queued job (SKIP LOCKED), so its queue's workers
        #: are woken to claim again once the flag is committed.
        self.mark = f"""
WITH flagged AS (
    UPDATE {n.jobs} SET awaited = true
    WHERE id = $1::uuid AND NOT awaited AND status NOT IN ('done', 'dead_letter', 'cancelled')
    RETURNING queue, status, scheduled_at
)
SELECT pg_notify('{n.jobs_channel}', queue) FROM flagged
WHERE status = 'queued' AND scheduled_at <= now()
"""


_sql = functools.cache(_Sql)


class PostgresAwaitStore:
    """Reached as ``PostgresBackend.awaits`` (None there when no LISTEN session can be held).
    ``ready`` returns the backend's pool; ``url`` is where the LISTEN connection goes
    (``listen_url``, else ``database_url``), and ``refuse_pooling`` names the setting when it
    is ``listen_url`` (a pooled one is refused, as the workers' listener does)."""

    def __init__(self, ready: Callable[[], Awaitable[Any]], errors: Translator, names: Names,
                 *, url: str, refuse_pooling: str | None) -> None:
        self._ready = ready
        self._errors = errors
        self._sql = _sql(names)
        self._channels = {names.awaited_channel: AWAITED_CHANNEL}
        self._url = url
        self._refuse_pooling = refuse_pooling

    async def mark(self, job_id: str) -> None:
        with self._errors:
            pool = await self._ready()
            await call(pool.execute, self._sql.mark, job_id)

    async def subscribe(self, on_ended: Callable[[Sequence[str]], None],
                        on_lost: Callable[[], None]) -> listener.Listening:
        def on_notify(_channel: str, payload: str) -> None:
            on_ended(payload.split())

        return await listener.subscribe(self._url, on_notify, on_lost, channels=self._channels,
                                        errors=Translator(self._url), refuse_pooling=self._refuse_pooling)
