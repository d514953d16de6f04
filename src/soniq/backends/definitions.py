"""Rows of ``soniq_job_definitions`` read back by the adapters: one place decides what a stored
row must hold to count as a :class:`~soniq.backends.stores.StoredDefinition`. Rows may be written
by hand (SQLite checks no types, ``options`` is any JSON): such a row is skipped with a warning
naming it, never an error, so no reader (a worker, the dashboard) fails because of it."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from soniq.backends.stores import JobDefinition, StoredDefinition

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["stored_definition"]

logger = logging.getLogger("soniq.definitions")


def stored_definition(row: Mapping[str, Any]) -> StoredDefinition | None:
    """A row (timestamps as aware datetimes or ISO text, ``options`` as JSON text or a dict) as
    a :class:`StoredDefinition`, or None with a warning naming the row when it is not one."""
    try:
        options = row["options"]
        if isinstance(options, (str, bytes)):
            options = json.loads(options)
        times = [row["first_seen_at"], row["last_seen_at"]]
        times = [datetime.fromisoformat(t) if isinstance(t, str) else t for t in times]
        timeout, encrypt = row["timeout"], row["encrypt"]
        checks = {
            "name": isinstance(row["name"], str) and row["name"] != "",
            "digest": isinstance(row["digest"], str),
            "queue": isinstance(row["queue"], str) and row["queue"] != "",
            "priority": _is_int(row["priority"]) and -32_768 <= row["priority"] <= 32_767,
            "max_attempts": _is_int(row["max_attempts"]) and row["max_attempts"] >= 1,
            "timeout": timeout is None or (isinstance(timeout, (int, float))
                                           and not isinstance(timeout, bool) and timeout >= 0),
            "encrypt": encrypt in (True, False),  # SQLite: 0 / 1
            "options": isinstance(options, dict),
            "seen": all(isinstance(t, datetime) and t.utcoffset() is not None for t in times),
        }
        wrong = [key for key, ok in checks.items() if not ok]
        if wrong:
            raise ValueError(f"bad {', '.join(wrong)}")
        definition = JobDefinition(
            name=row["name"], queue=row["queue"], priority=row["priority"],
            max_attempts=row["max_attempts"], timeout=None if timeout is None else float(timeout),
            encrypt=bool(encrypt), options=options)
        return StoredDefinition(definition, row["digest"], times[0], times[1])
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        logger.warning("ignoring the job definition row name=%r digest=%r: %s",
                       _get(row, "name"), _get(row, "digest"), exc)
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _get(row: Mapping[str, Any], key: str) -> Any:
    try:
        return row[key]
    except (KeyError, IndexError):
        return None
