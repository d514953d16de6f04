"""The adapters' WHERE builders: fixed conditions from code, values only as bind parameters,
numbered after the statement's own (PostgreSQL). The stores' filtered reads that use them are
covered on real databases by the conformance, dead-letter, logs, webhooks and dashboard tests."""

from __future__ import annotations

from datetime import UTC, datetime

from soniq.backends.postgres.where import where as pg_where
from soniq.backends.sqlite.where import where as lite_where

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_postgres_numbers_the_filters_given_after_the_statements_own() -> None:
    assert pg_where(("queue = {}::text", None)) == ("", [])
    assert pg_where(("queue = {}::text", "a"), ("status = {}::text", None),
                    ("created_at >= {}::timestamptz", AT), first=3) == (
        " WHERE queue = $3::text AND created_at >= $4::timestamptz", ["a", AT])
    assert pg_where(("job_name = {}::text", None), always=("status = 'dead_letter'",)) == (
        " WHERE status = 'dead_letter'", [])
    assert pg_where(("levelno >= {}::integer", 0)) == (" WHERE levelno >= $1::integer", [0])


def test_sqlite_binds_datetimes_as_stored_text() -> None:
    assert lite_where(("queue = ?", None)) == ("", [])
    assert lite_where(("queue = ?", "a"), ("status = ?", None), ("created_at >= ?", AT),
                      always=("status = 'dead_letter'",)) == (
        " WHERE status = 'dead_letter' AND queue = ? AND created_at >= ?",
        ["a", "2026-01-02T03:04:05.000000Z"])
