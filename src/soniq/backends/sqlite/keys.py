"""Jobs with dedup keys on SQLite: their keys' rows (``soniq_unique_keys``) and standing jobs
read, and the decision of :func:`soniq.backends.keys.plan` written, inside the insert's write
transaction (SQLite has one writer at a time, so nothing changes in between)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.backends.keys import Standing
from soniq.backends.sqlite.sql import from_db, placeholders, to_db

if TYPE_CHECKING:
    from collections.abc import Sequence

    from soniq.backends.keys import Plan

__all__ = ["PRUNE_KEYS", "standing", "write"]

#: Bind parameters per lookup: far below SQLite's limit of 32766 per statement.
_CHUNK = 500

#: now, batch size. One batch of dedup keys that block nothing: window passed, job ended or gone.
PRUNE_KEYS = """
DELETE FROM soniq_unique_keys WHERE key IN (
    SELECT k.key FROM soniq_unique_keys AS k
    WHERE (k.expires_at IS NULL OR k.expires_at <= ?1)
      AND NOT EXISTS (SELECT 1 FROM soniq_jobs AS j
                      WHERE j.id = k.job_id AND j.status IN ('waiting', 'queued', 'processing'))
    LIMIT ?2
)
RETURNING 1
"""

_TAKE = ("INSERT INTO soniq_unique_keys (key, job_id, expires_at, taken_at) VALUES (?, ?, ?, ?) "
         "ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id, "
         "expires_at = excluded.expires_at, taken_at = excluded.taken_at")

_REPLACE = ("UPDATE soniq_jobs SET args = ?, scheduled_at = ?, updated_at = ? "
            "WHERE id = ? AND status IN ('waiting', 'queued')")


async def standing(conn: Any, keys: Sequence[str]) -> dict[str, Standing]:
    """The stored rows of ``keys`` with their standing jobs (status, first enqueue)."""
    out = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start:start + _CHUNK]
        rows = await conn.execute_fetchall(
            "SELECT k.key, k.job_id, k.expires_at, j.status, j.created_at "
            "FROM soniq_unique_keys AS k LEFT JOIN soniq_jobs AS j ON j.id = k.job_id "
            f"WHERE k.key IN ({placeholders(len(chunk))})", chunk)
        for key, job_id, expires_at, status, created_at in rows:
            out[key] = Standing(job_id, None if expires_at is None else from_db(expires_at),
                                status, None if created_at is None else from_db(created_at))
    return out


async def write(conn: Any, decided: Plan, now: str) -> None:
    """The keys ``decided`` takes and the standing jobs it replaces (``now``: stored text)."""
    if decided.take:
        await conn.executemany(_TAKE, [
            (key, job_id, None if expires_at is None else to_db(expires_at), now)
            for key, (job_id, expires_at) in decided.take.items()])
    if decided.replace:
        await conn.executemany(_REPLACE, [
            (args, to_db(at), now, job_id) for job_id, (args, at) in decided.replace.items()])
