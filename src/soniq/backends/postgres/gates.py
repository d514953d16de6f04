"""Claims that limits govern, on PostgreSQL: gated queues (a stored ``concurrency_limit`` or
``rate_limit``) and rate-limited jobs (rows stored with a ``rate_key``, ``hold = 'rate'``). The
plain claims (:mod:`.sql`) never take these (:func:`.sql.closed_queues`; the claim indexes hold
``hold IS NULL`` rows only), so unlimited work keeps its index walk and pays nothing.

- **Rate-limited jobs**, one statement (:attr:`GateSql.claim_rated`): the distinct (job name,
  key) pairs with claimable rows, found by a loose index scan over ``soniq_jobs_rated_idx``; their
  buckets (``soniq_rate_buckets``) that are not held, locked ``FOR UPDATE SKIP LOCKED`` -- under
  READ COMMITTED a locked row is read as last committed, so the tokens are exact although the
  statement's snapshot is older -- then per bucket up to ``floor(tokens)`` rows, and the tokens
  taken written back. A bucket another claim holds is skipped, never waited for. A key without a
  bucket row gets one (full) for the next claim: rows of one statement cannot see each other.
- **Gated queues**, one transaction of two statements: lock the queues' rows (``SKIP LOCKED``),
  then -- a new statement, so a new snapshot that sees every claim committed by the lock's
  previous holders -- count each queue's ``processing`` jobs, take at most ``concurrency_limit``
  minus that and ``floor(tokens)`` of its queue bucket, and write the tokens back. Counting in
  one statement would not do: two claims would both see the same free room.

Both claim like the plain claims (:func:`.sql.claim`: lease from the claim key, no WAL wait).
Asyncio-native coroutines that run inside :func:`soniq.backends._bridge.call` (asyncpg only).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from soniq.backends.postgres import sql
from soniq.ids import new_id

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from soniq.backends.postgres.names import Names
    from soniq.limits import RateGate

__all__ = ["GateSql", "claim", "gate_sql", "hold_buckets"]

logger = logging.getLogger("soniq.postgres")

#: The bucket's tokens now: ``Rate.tokens`` in SQL. ``{b}`` the row (tokens, refilled_at),
#: ``{count}``/``{seconds}`` the rate, ``{now}`` the time.
_TOKENS = ("LEAST({count}::float8, COALESCE({b}.tokens + GREATEST(EXTRACT(epoch FROM {now} - "
           "{b}.refilled_at), 0) * {count} / {seconds}, {count}::float8))")

_NOW = "COALESCE($2::timestamptz, now())"


class GateSql:
    """The statements of the gated claims for one schema (:func:`gate_sql`). Parameters as the
    plain claims': $1 worker id, $2 now (NULL: the database clock), $3 limit, $4 claim key."""

    def __init__(self, n: Names) -> None:
        paused = f"ARRAY(SELECT name FROM {n.queues} WHERE paused)"
        rated = "job_name = ANY($5::text[]) AND status = 'queued' AND hold = 'rate'"
        tokens = _TOKENS.format(b="b", count="g.count", seconds="g.seconds", now=_NOW)
        #: Rate-limited rows: $5 job names, $6 their counts, $7 their periods (seconds), $8
        #: the worker's queues (NULL: all).
        self.claim_rated = f"""
WITH RECURSIVE keys (job_name, key) AS (
    (SELECT job_name, rate_key FROM {n.jobs} WHERE {rated}
     ORDER BY job_name, rate_key LIMIT 1)
    UNION ALL
    SELECT nxt.job_name, nxt.rate_key FROM keys CROSS JOIN LATERAL (
        SELECT job_name, rate_key FROM {n.jobs}
        WHERE {rated} AND (job_name, rate_key) > (keys.job_name, keys.key)
        ORDER BY job_name, rate_key LIMIT 1
    ) AS nxt
), gate AS (
    SELECT * FROM unnest($5::text[], $6::integer[], $7::float8[]) AS g (job_name, count, seconds)
), open AS (
    SELECT b.job_name, b.key, {tokens} AS tokens
    FROM {n.rate_buckets} AS b
    JOIN keys ON keys.job_name = b.job_name AND keys.key = b.key
    JOIN gate AS g ON g.job_name = b.job_name
    WHERE b.blocked_until IS NULL OR b.blocked_until <= {_NOW}
    FOR UPDATE OF b SKIP LOCKED
), picked AS (
    SELECT c.id, o.job_name, o.key FROM open AS o CROSS JOIN LATERAL (
        SELECT id, priority, scheduled_at FROM {n.jobs}
        WHERE job_name = o.job_name AND rate_key = o.key
          AND status = 'queued' AND hold = 'rate'
          AND scheduled_at <= {_NOW}
          AND ($8::text[] IS NULL OR queue = ANY($8::text[]))
          AND NOT (ARRAY[queue] <@ {paused})
        ORDER BY job_name, rate_key, priority, scheduled_at, id
        LIMIT floor(o.tokens)::integer
        FOR UPDATE SKIP LOCKED
    ) AS c
    ORDER BY c.priority, c.scheduled_at, c.id
    LIMIT $3
), spent AS (
    UPDATE {n.rate_buckets} AS b SET tokens = o.tokens - p.n, refilled_at = {_NOW}
    FROM open AS o
    JOIN (SELECT job_name, key, count(*) AS n FROM picked GROUP BY job_name, key) AS p
      ON p.job_name = o.job_name AND p.key = o.key
    WHERE b.job_name = o.job_name AND b.key = o.key
), created AS (
    INSERT INTO {n.rate_buckets} (job_name, key)
    SELECT job_name, key FROM keys
    WHERE NOT EXISTS (SELECT 1 FROM {n.rate_buckets} AS b
                      WHERE b.job_name = keys.job_name AND b.key = keys.key)
    ON CONFLICT (job_name, key) DO NOTHING
)
{sql.claim(n, "SELECT id FROM picked")}"""

        #: Lock the gated queues among $1 (not paused, a limit set), in name order, skipping
        #: those another claim holds.
        self.lock_queues = f"""
SELECT name FROM {n.queues}
WHERE name = ANY($1::text[]) AND NOT paused
  AND (concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL)
ORDER BY name
FOR UPDATE SKIP LOCKED
"""
        q_count = "split_part(q.rate_limit, '/', 1)::integer"
        q_seconds = ("CASE split_part(q.rate_limit, '/', 2) WHEN 's' THEN 1 WHEN 'm' THEN 60 "
                     "ELSE 3600 END")
        q_tokens = _TOKENS.format(b="q", count=q_count, seconds=q_seconds, now=_NOW)
        #: After ``lock_queues``, in its transaction: $5 the locked queues, $6 the job names
        #: the worker met and did not register (:func:`.sql.known`).
        self.claim_queues = f"""
WITH gate AS (
    SELECT q.name, q.rate_limit IS NOT NULL AS rated,
           CASE WHEN q.rate_limit IS NULL THEN NULL ELSE {q_tokens} END AS tokens,
           LEAST(
               COALESCE(q.concurrency_limit - (SELECT count(*) FROM {n.jobs} AS r
                                               WHERE r.queue = q.name
                                                 AND r.status = 'processing'), $3::bigint),
               COALESCE(floor(CASE WHEN q.rate_limit IS NULL THEN NULL ELSE {q_tokens} END)
                        ::bigint, $3::bigint),
               $3::bigint) AS room
    FROM {n.queues} AS q WHERE q.name = ANY($5::text[])
), picked AS (
    SELECT c.id, g.name FROM gate AS g CROSS JOIN LATERAL (
        SELECT id, priority, scheduled_at FROM {n.jobs}
        WHERE status = 'queued' AND hold IS NULL AND {sql.known('$6')}
          AND queue >= g.name AND queue <= g.name
          AND scheduled_at <= {_NOW}
        ORDER BY queue, priority, scheduled_at, id
        LIMIT GREATEST(g.room, 0)
        FOR UPDATE SKIP LOCKED
    ) AS c
    ORDER BY c.priority, c.scheduled_at, c.id
    LIMIT $3
), spent AS (
    UPDATE {n.queues} AS q SET tokens = g.tokens - p.n, refilled_at = {_NOW}
    FROM gate AS g
    JOIN (SELECT name, count(*) AS n FROM picked GROUP BY name) AS p ON p.name = g.name
    WHERE q.name = g.name AND g.rated
)
{sql.claim(n, "SELECT id FROM picked")}"""

        #: $1 job ids, $2 until: hold each one's bucket (job name, rate key or '') until then.
        self.hold = f"""
INSERT INTO {n.rate_buckets} AS b (job_name, key, blocked_until)
SELECT j.job_name, COALESCE(j.rate_key, ''), max(h.until)
FROM unnest($1::uuid[], $2::timestamptz[]) AS h (id, until)
JOIN {n.jobs} AS j ON j.id = h.id
GROUP BY j.job_name, COALESCE(j.rate_key, '')
ON CONFLICT (job_name, key) DO UPDATE
SET blocked_until = GREATEST(b.blocked_until, EXCLUDED.blocked_until)
"""


gate_sql = functools.cache(GateSql)


async def claim(pool: Any, q: sql.Sql, g: GateSql, plain: str, extra: tuple[Any, ...],
                worker_id: str, now: datetime | None, limit: int, keys: list[str], *,
                queues: Sequence[str] | None, limited: frozenset[str],
                rates: Sequence[RateGate], unknown: list[str]) -> list[Any]:
    """Claim up to ``limit`` jobs: first the jobs of this worker's earlier claims whose answer
    was lost (their keys are ``keys``: they may have committed), then from the gated queues in
    ``limited`` (those the worker serves), then rate-limited rows, then the ``plain`` claim
    (with its ``extra`` parameters) for the rest, so limited work does not wait behind a busy
    queue; none of a job name in ``unknown`` (rate-limited rows are only of names in
    ``rates``, which the worker registered). Each claim's key is appended to ``keys`` before it is sent, so that the caller keeps
    them when this raises."""
    rows: list[Any] = []
    if keys:
        rows += await pool.fetch(q.adopt_claims, worker_id, keys)
        if rows:
            logger.warning("took up %d job(s) claimed by this worker whose claim's answer was "
                           "lost with its connection", len(rows))
    gated = sorted(limited if queues is None else limited.intersection(queues))
    if gated and len(rows) < limit:
        keys.append(new_id())
        rows += await _claim_queues(pool, g, worker_id, now, limit - len(rows), keys[-1], gated,
                                    unknown)
    if rates and len(rows) < limit:
        keys.append(new_id())
        rows += await pool.fetch(
            g.claim_rated, worker_id, now, limit - len(rows), keys[-1],
            [gate.job_name for gate in rates], [gate.rate.count for gate in rates],
            [gate.rate.seconds for gate in rates], None if queues is None else list(queues))
    if len(rows) < limit:
        keys.append(new_id())
        rows += await pool.fetch(plain, worker_id, now, limit - len(rows), keys[-1], unknown,
                                 *extra)
    return rows


async def _claim_queues(pool: Any, g: GateSql, worker_id: str, now: datetime | None, limit: int,
                       key: str, queues: Sequence[str], unknown: list[str]) -> list[Any]:
    """Claim up to ``limit`` jobs of the gated ``queues`` within their limits (a transaction)."""
    async with pool.acquire() as conn, conn.transaction():
        locked = [row["name"] for row in await conn.fetch(g.lock_queues, sorted(queues))]
        if not locked:
            return []
        rows: list[Any] = await conn.fetch(g.claim_queues, worker_id, now, limit, key, locked,
                                           unknown)
        return rows


async def hold_buckets(pool: Any, g: GateSql, holds: dict[str, datetime]) -> None:
    """Hold the buckets of the jobs ``holds`` names (accepted ``RateLimited`` outcomes)."""
    await pool.execute(g.hold, list(holds), list(holds.values()))
