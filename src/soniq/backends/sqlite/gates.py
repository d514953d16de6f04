"""Queue limits and rate limits on SQLite: the memory backend's semantics
(:mod:`soniq.backends.memory.gates`) inside the claim's ``BEGIN IMMEDIATE`` transaction. One
writer at a time holds the file's write lock, so counting a queue's running jobs, reading a
bucket, claiming and writing the bucket back within one transaction is exact across processes.

The token math is :meth:`soniq.limits.Rate.tokens`, in Python, so every backend agrees. Each
function takes the writer connection of an open transaction.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from soniq.backends.sqlite import sql
from soniq.limits import parse_rate

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    import aiosqlite

    from soniq.limits import RateGate

__all__ = ["claim", "hold"]

#: name. A gated queue's limits and bucket (no row: not gated, or paused).
_GATED = (
    "SELECT concurrency_limit, rate_limit, tokens, refilled_at FROM soniq_queues "
    "WHERE name = ? AND NOT paused AND (concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL)"
)
_RUNNING = "SELECT count(*) FROM soniq_jobs WHERE queue = ? AND status = 'processing'"
_SET_QUEUE_TOKENS = "UPDATE soniq_queues SET tokens = ?, refilled_at = ? WHERE name = ?"
#: A gated queue's claim (worker_id, started_at, updated_at, now, queue, limit).
_GATED_CLAIM = " AND rate_key IS NULL AND queue = ?"
_SET_TOKENS = (
    "INSERT INTO soniq_rate_buckets (job_name, key, tokens, refilled_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (job_name, key) DO UPDATE SET tokens = excluded.tokens, "
    "refilled_at = excluded.refilled_at"
)
#: job_name, key, until. The later of the stored hold and this one; tokens stay.
_HOLD = (
    "INSERT INTO soniq_rate_buckets (job_name, key, blocked_until) VALUES (?1, ?2, ?3) "
    "ON CONFLICT (job_name, key) DO UPDATE SET blocked_until = max(coalesce(blocked_until, ?3), ?3)"
)
_UNPAUSED = " AND queue NOT IN (SELECT name FROM soniq_queues WHERE paused)"


def _in_queues(queue_count: int | None) -> str:
    return "" if queue_count is None else f" AND +queue IN ({sql.placeholders(queue_count)})"


def _keys_sql(queue_count: int | None) -> str:
    """job_name, now, *queues. A rate-limited job's keys with due rows, and their buckets."""
    return (
        "SELECT k.rate_key, b.tokens, b.refilled_at, b.blocked_until FROM ("
        "SELECT DISTINCT rate_key FROM soniq_jobs WHERE status = 'queued' AND hold IS NULL "
        f"AND rate_key IS NOT NULL AND job_name = ?1 AND scheduled_at <= ?2"
        f"{_in_queues(queue_count)}{_UNPAUSED}) AS k "
        "LEFT JOIN soniq_rate_buckets AS b ON b.job_name = ?1 AND b.key = k.rate_key "
        "ORDER BY k.rate_key"
    )


def _rated_claim(queue_count: int | None) -> str:
    """worker_id, started_at, updated_at, now, job_name, key, *queues, limit."""
    return sql.claim_statement(
        f" AND rate_key IS NOT NULL AND job_name = ? AND rate_key = ?{_in_queues(queue_count)}"
        f"{_UNPAUSED}")


async def claim(conn: aiosqlite.Connection, worker_id: str, queues: Sequence[str] | None,
                limit: int, now: datetime, limited: frozenset[str],
                rates: Sequence[RateGate], unknown: Sequence[str] = ()) -> list[Any]:
    """Claim up to ``limit`` jobs of the gated queues in ``limited`` (among ``queues``) and of
    the rate-limited jobs in ``rates``, each within its limits, taking their tokens, never of a
    job name in ``unknown``. Returns the claimed rows (``sql.CLAIMED_COLUMNS``)."""
    at = sql.to_db(now)
    gated_claim = sql.claim_statement(_GATED_CLAIM + sql.unknown_filter(len(unknown)))
    rows: list[Any] = []
    names = sorted(limited if queues is None else limited.intersection(queues))
    for name in names:
        if len(rows) >= limit:
            break
        found = list(await conn.execute_fetchall(_GATED, (name,)))
        if not found:
            continue
        concurrency_limit, text, tokens, refilled_at = found[0]
        room = limit - len(rows)
        if concurrency_limit is not None:
            [(running,)] = list(await conn.execute_fetchall(_RUNNING, (name,)))
            room = min(room, concurrency_limit - running)
        rate = parse_rate(text)
        now_tokens = 0.0
        if rate is not None:
            now_tokens = rate.tokens(tokens, _time(refilled_at), now)
            room = min(room, math.floor(now_tokens))
        if room <= 0:
            continue
        got = list(await conn.execute_fetchall(gated_claim,
                                               (worker_id, at, at, at, name, *unknown, room)))
        if rate is not None and got:
            await conn.execute(_SET_QUEUE_TOKENS, (now_tokens - len(got), at, name))
        rows += got
    count = None if queues is None else len(queues)
    keys_sql, claim_sql = _keys_sql(count), _rated_claim(count)
    for gate in {gate.job_name: gate for gate in rates}.values():
        if len(rows) >= limit:
            break
        keys = await conn.execute_fetchall(keys_sql, (gate.job_name, at, *(queues or ())))
        for key, tokens, refilled_at, blocked_until in keys:
            if blocked_until is not None and blocked_until > at:
                continue
            now_tokens = gate.rate.tokens(tokens, _time(refilled_at), now)
            room = min(limit - len(rows), math.floor(now_tokens))
            if room <= 0:
                continue
            got = list(await conn.execute_fetchall(
                claim_sql, (worker_id, at, at, at, gate.job_name, key, *(queues or ()), room)))
            if got:
                await conn.execute(_SET_TOKENS, (gate.job_name, key, now_tokens - len(got), at))
            rows += got
    return rows


async def hold(conn: aiosqlite.Connection, rows: Sequence[Sequence[Any]],
               holds: Mapping[str, datetime]) -> None:
    """Hold the rate buckets of the completed ``rows`` (id, rate_key, job_name, ...) whose id
    has a hold in ``holds``."""
    held = [(job_name, rate_key or "", sql.to_db(holds[job_id]))
            for job_id, rate_key, job_name, *_ in rows if job_id in holds]
    if held:
        await conn.executemany(_HOLD, held)


def _time(text: str | None) -> datetime | None:
    return None if text is None else sql.from_db(text)
