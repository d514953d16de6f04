"""Facts about a PostgreSQL server for ``soniq doctor`` and ``soniq migrate-status``.

Everything is read on plain connections outside the pool, without the schema check, so it works
before ``soniq setup`` and through PgBouncer (no prepared-statement cache). Each driver call goes
through :func:`soniq.backends._bridge.call`; waiting happens on the caller's side.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import asyncpg

from soniq.backends._bridge import call
from soniq.backends.postgres.errors import Translator, translate
from soniq.backends.postgres.pooling import BACKEND_PID, shares_sessions, transaction_pooled
from soniq.backends.postgres.schema import SERVER_SETTINGS, close_quietly
from soniq.errors import DatabaseError

if TYPE_CHECKING:
    from soniq.backends.postgres.names import Names
    from soniq.types import ListenUrlInfo

__all__ = ["probe"]

_FACTS = """
SELECT clock_timestamp() AS clock, pg_backend_pid() AS pid,
       current_setting('server_version') AS version,
       current_setting('max_connections')::integer AS max_connections,
       current_setting('port')::integer AS port
"""
#: Seconds to wait for a connection (a silent, firewalled host must not hang the doctor).
_CONNECT_TIMEOUT = 10.0
_NOTIFY = "SELECT pg_notify($1::text, $2::text)"


async def probe(url: str, errors: Translator, names: Names, *, listen_timeout: float = 2.0,
                listen_url: str | None = None) -> dict[str, Any]:
    """Server version, applied migrations (in the schema of ``names``), round trip, clock
    skew, pooling mode, LISTEN; and with ``listen_url``, how that connection fares
    (:class:`~soniq.types.ListenUrlInfo`).

    Pooling is judged on two client connections held open together (see :mod:`.pooling`): a
    backend shared between them, or changing under one of them, proves transaction pooling. A
    pooler or proxy in between shows as a cancel key that is not the backend's pid (what a pooler
    must make up), or as a server ``port`` other than the URL's (PgBouncer listens on 6432 by
    default)."""
    with errors:
        conn = await call(_connect, url)
    try:
        with errors:
            other = await call(_connect, url)
        try:
            before = time.time()
            started = time.monotonic()
            with errors:
                row = await call(conn.fetchrow, _FACTS)
            round_trip = time.monotonic() - started
            with errors:
                again = await call(conn.fetchval, BACKEND_PID)
                other_pid = await call(other.fetchval, BACKEND_PID)
                applied = await call(_applied, conn, names)
            listen_works = await _listen_roundtrip(other, conn, errors, listen_timeout)
            direct = (None if listen_url is None
                      else await _listen_url(listen_url, conn, listen_timeout))
        finally:
            with anyio.CancelScope(shield=True):
                await call(close_quietly, other)
    finally:
        with anyio.CancelScope(shield=True):
            await call(close_quietly, conn)
    return {
        "server_version": str(row["version"]),
        "applied_migrations": applied,
        "round_trip": round_trip,
        "clock_skew": row["clock"].timestamp() - (before + round_trip / 2),
        "transaction_pooling": shares_sessions(row["pid"], again, other_pid),
        "listen_works": listen_works,
        "max_connections": int(row["max_connections"]),
        "via_proxy": (conn.get_server_pid() != row["pid"]
                      or _url_port(url) not in (None, int(row["port"]))),
        "listen_url": direct,
    }


async def _listen_url(url: str, sender: Any, wait: float) -> ListenUrlInfo:
    """Connect to ``listen_url``, tell whether it is transaction-pooled, and whether a NOTIFY
    sent on ``sender`` (a ``database_url`` connection) reaches a LISTEN there."""
    errors = Translator(url)
    try:
        with errors:
            conn = await call(_connect, url)
    except DatabaseError as exc:
        return {"error": exc.message, "transaction_pooling": None, "listen_works": None}
    try:
        async def other_pid() -> int:  # runs on the driver's loop, inside transaction_pooled
            other = await _connect(url)
            try:
                return int(await other.fetchval(BACKEND_PID))
            finally:
                await close_quietly(other)

        with errors:
            pooled = await call(transaction_pooled, conn, other_pid)
        works = None if pooled else await _listen_roundtrip(conn, sender, errors, wait)
    finally:
        with anyio.CancelScope(shield=True):
            await call(close_quietly, conn)
    return {"error": None, "transaction_pooling": pooled, "listen_works": works}


def _url_port(url: str) -> int | None:
    """The port the URL connects to (5432 when it names none); None when it cannot tell."""
    try:
        parts = urlsplit(url)
        if "," in parts.netloc or "host=" in parts.query or "port=" in parts.query:
            return None  # several hosts, or a host/port given as a parameter
        return parts.port or 5432
    except ValueError:
        return None


async def _connect(url: str) -> Any:
    try:
        return await asyncpg.connect(url, statement_cache_size=0, server_settings=SERVER_SETTINGS,
                                     timeout=_CONNECT_TIMEOUT)
    except Exception as exc:
        translated = translate(exc, url, connecting=True)
        if translated is None:
            raise
        raise translated from exc


async def _applied(conn: Any, names: Names) -> list[str]:
    try:
        rows = await conn.fetch(f"SELECT version, name FROM {names.migrations} ORDER BY version")
    except asyncpg.UndefinedTableError:
        return []
    return [f"{row['version']:04d}_{row['name']}" for row in rows]


async def _listen_roundtrip(listener: Any, sender: Any, errors: Translator, wait: float) -> bool:
    """Whether a NOTIFY sent on ``sender`` reaches a LISTEN on ``listener``, another connection,
    in time (a private channel, so no worker is woken)."""
    channel = f"soniq_doctor_{uuid.uuid4().hex[:16]}"
    token = uuid.uuid4().hex
    received: list[str] = []

    def on_message(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        received.append(payload)

    with errors:
        await call(listener.add_listener, channel, on_message)
        await call(sender.fetchval, _NOTIFY, channel, token)
    with anyio.move_on_after(wait):
        # Polled: under trio the callback runs on the bridge thread, which must not touch
        # the caller's event objects.
        while token not in received:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return token in received
