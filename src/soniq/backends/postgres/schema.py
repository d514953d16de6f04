"""Creating the database, applying migrations and checking the schema version.

Migrations run only from ``soniq setup`` / ``app.setup()`` (DESIGN.md §3): on their own
connection, each file in one transaction together with its ``soniq_migrations`` row, while a
transaction on a second connection holds an advisory lock for the whole run, so concurrent runs
apply each file exactly once. Nothing here needs a session to outlive a transaction (no session
lock, no cached prepared statement), so it works through PgBouncer's transaction pooling too.
With ``db_schema`` the schema is created first, and each migration's transaction starts with
``SET LOCAL search_path`` to it (:func:`soniq.migrations.schema_setup`): the shipped files name
their objects unqualified, and the setting ends with the transaction.
Everything here is an asyncio-native coroutine meant to run inside
:func:`soniq.backends._bridge.call`.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from soniq.backends.postgres import sql
from soniq.backends.postgres.errors import SETUP_HINT, redact_url, translate
from soniq.backends.postgres.names import quote
from soniq.errors import ConfigurationError, MigrationError, SchemaMissingError
from soniq.migrations import MIGRATIONS_TABLE, Migration, load_migrations, schema_setup

if TYPE_CHECKING:
    from soniq.backends.postgres.sql import Sql

__all__ = ["CUSTOM_PLANS", "SERVER_SETTINGS", "check_schema", "connect", "migrate",
           "plan_every_execution", "shipped_migrations"]

#: Session settings on every connection Soniq opens.
SERVER_SETTINGS = {"timezone": "UTC"}

#: Set on the worker loops' pooled connections that cache prepared statements: plan every
#: execution with its real parameters and the table's real size. A generic plan cached while
#: soniq_jobs was small (a fresh install, a drained queue) keeps its Seq Scan as the table grows:
#: measured 36 ms instead of 0.5 ms per claim at 200 000 finished rows
#: (tests/backends/test_claim_plan.py). Applied by :func:`plan_every_execution`, not as a startup
#: parameter: PgBouncer refuses startup parameters it does not know (in every pool mode, unless
#: listed in its ignore_startup_parameters). Not needed with statement_cache_size=0: unnamed
#: statements are planned per execution anyway.
CUSTOM_PLANS = {"plan_cache_mode": "force_custom_plan"}

# Database names migrate() will create: plain identifiers, at most 63 bytes (NAMEDATALEN - 1).
_DATABASE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.$-]{0,62}")


@functools.cache
def shipped_migrations() -> tuple[Migration, ...]:
    return tuple(load_migrations("postgres"))


async def plan_every_execution(conn: Any) -> None:
    """The pool's ``init`` for connections that cache prepared statements: apply
    :data:`CUSTOM_PLANS` for the session (one round trip per new connection)."""
    await conn.execute("; ".join(f"SET {name} = {value}" for name, value in CUSTOM_PLANS.items()))


def _where(url: str, q: Sql) -> str:
    """The database (and the schema, when one is set) for messages."""
    schema = q.names.schema
    return redact_url(url) if schema is None else f"{redact_url(url)} (schema {schema})"


async def check_schema(pool: Any, url: str, q: Sql) -> None:
    """Raise :class:`SchemaMissingError` unless every shipped migration is applied in the schema
    of ``q``."""
    try:
        rows = await pool.fetch(q.schema_versions)
    except asyncpg.UndefinedTableError as exc:
        raise SchemaMissingError(f"{_where(url, q)} has no Soniq schema; {SETUP_HINT}") from exc
    applied = {row["version"] for row in rows}
    missing = [m.label for m in shipped_migrations() if m.version not in applied]
    if missing:
        raise SchemaMissingError(
            f"the Soniq schema in {_where(url, q)} is out of date (not applied: "
            f"{', '.join(missing)}); run `soniq setup` (or `await app.setup()`) to apply them"
        )


async def connect(url: str, *, target: str | None = None, name: str | None = None) -> Any:
    """A plain connection to ``url``; errors name ``target`` (the URL the user configured).
    A missing database stays ``InvalidCatalogNameError`` so :func:`migrate` can create it.
    Without a statement cache: its few statements gain nothing from one, and a cached statement
    would not survive PgBouncer's transaction pooling. ``name`` becomes its ``application_name``
    (what pg_stat_activity shows)."""
    settings = SERVER_SETTINGS if name is None else SERVER_SETTINGS | {"application_name": name}
    try:
        return await asyncpg.connect(url, server_settings=settings, statement_cache_size=0)
    except asyncpg.InvalidCatalogNameError:
        raise
    except Exception as exc:
        translated = translate(exc, target or url, connecting=True)
        if translated is None:
            raise
        raise translated from exc


async def close_quietly(conn: Any) -> None:
    try:
        await conn.close(timeout=5)
    except Exception:  # already broken: drop it without the goodbye
        conn.terminate()


async def migrate(url: str, q: Sql) -> list[str]:
    """Create the database if needed, apply pending migrations in the schema of ``q`` (created
    if needed); return the labels applied. The advisory lock's key is the schema's, so setups of
    different schemas do not wait for each other."""
    conn = await _connect_creating_database(url)
    try:
        # The lock is held for the whole run by a transaction on a second connection, so that
        # each migration still commits on its own: a concurrent run waits, then finds nothing to
        # do. Transaction-scoped, it ends with this run even through PgBouncer's transaction
        # pooling, where a session lock would stay behind on a pooled server connection.
        holder = await connect(url)
        try:
            lock = holder.transaction()
            await lock.start()
            try:
                await holder.execute(sql.MIGRATION_LOCK, q.names.migration_lock_key)
                return await _apply_pending(conn, url, q)
            finally:
                # Closing the connection ends the transaction anyway; a failed rollback on a
                # broken connection must not hide the error that broke it.
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await lock.rollback()
        finally:
            await close_quietly(holder)
    finally:
        await close_quietly(conn)


async def _apply_pending(conn: Any, url: str, q: Sql) -> list[str]:
    schema = q.names.schema
    enter = None
    if schema is not None:
        create, enter = schema_setup(schema)
        # Asked first: a role may use a schema made for it without being allowed to create one.
        if not await conn.fetchval(sql.SCHEMA_EXISTS, schema):
            await conn.execute(create)
    async with conn.transaction():
        if enter is not None:
            await conn.execute(enter)
        await conn.execute(MIGRATIONS_TABLE["postgres"])
    applied = {row["version"] for row in await conn.fetch(q.schema_versions)}
    done = []
    for migration in shipped_migrations():
        if migration.version in applied:
            continue
        try:
            async with conn.transaction():
                if enter is not None:
                    await conn.execute(enter)  # SET LOCAL: this transaction only
                await conn.execute(migration.sql)
                await conn.execute(q.record_migration, migration.version, migration.name)
        except asyncpg.PostgresError as exc:
            reason = translate(exc, url)
            raise MigrationError(
                f"migration {migration.label} failed on {_where(url, q)} and was rolled back: "
                f"{reason.message if reason else exc}"
            ) from exc
        done.append(migration.label)
    return done


async def _connect_creating_database(url: str) -> Any:
    try:
        return await connect(url)
    except asyncpg.InvalidCatalogNameError:
        pass
    name, maintenance_url = _database_and_maintenance_url(url)
    admin = await connect(maintenance_url, target=url)
    try:
        if not await admin.fetchval(sql.DATABASE_EXISTS, name):
            # A concurrent migrate() may create it first: that is success too.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                # DDL takes no bind parameters: the name is validated and quoted.
                await admin.execute(f"CREATE DATABASE {quote(name)}")
    finally:
        await close_quietly(admin)
    return await connect(url)


def _database_and_maintenance_url(url: str) -> tuple[str, str]:
    """The database named by ``url``, and the same server's ``postgres`` database to create it
    from. Only plain names are created automatically."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    name = unquote(parts.path.lstrip("/"))
    for key, value in query:
        if key in ("dbname", "database"):
            name = value
    if not name:
        raise ConfigurationError(
            f"database_url {redact_url(url)} names no database; add one (postgresql://host/mydb)"
        )
    if not _DATABASE_NAME.fullmatch(name) or len(name.encode()) > 63:
        raise ConfigurationError(
            f"database {name!r} does not exist and soniq setup creates only plain names "
            "(letters, digits, _ . $ -; at most 63 bytes); create it yourself, then run soniq setup"
        )
    query = [(k, v) for k, v in query if k not in ("dbname", "database")]
    maintenance = urlunsplit((parts.scheme, parts.netloc, "/postgres", urlencode(query),
                              parts.fragment))
    return name, maintenance

