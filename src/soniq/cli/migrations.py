"""``soniq migrate-status`` and ``soniq migrations sql``: the schema, for people and for the teams
that apply migrations with their own tool (Alembic, Flyway, sqitch, ...)."""

from __future__ import annotations

from typing import Literal

from cyclopts import App

from soniq.cli._common import AppPath, Target, open_app, run
from soniq.cli._output import print_fields, print_json, print_line
from soniq.migrations import migration_script
from soniq.settings import DB_SCHEMA, redact_url

__all__ = ["app", "migrate_status", "migration_sql"]

app = App(name="migrations", help="Soniq's schema migrations, for applying them yourself.")


def migrate_status(app_path: AppPath = None, /, *,
                   json: bool = False, target: Target = Target()) -> int:  # noqa: B008
    """Show which migrations the database has and which are pending. Exits 3 when some are
    pending (run soniq setup), so deploy scripts can check it.

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute (optional; default: SONIQ_APP).
    json
        Print {"applied": [...], "pending": [...]} as JSON.
    """
    soniq = open_app(target, app_path=app_path)
    info = run(soniq, soniq.database_info)
    applied, pending = info["applied_migrations"], info["pending_migrations"]
    if json:
        print_json({"database": redact_url(soniq.settings.database_url),
                    "applied": applied, "pending": pending})
    else:
        print_fields([("database", redact_url(soniq.settings.database_url)),
                      ("applied", applied or "none"), ("pending", pending or "none")])
        if pending:
            print_line(f"{len(pending)} migration(s) pending: run `soniq setup` to apply them, "
                       "or apply the output of `soniq migrations sql` with your own tool")
    return 3 if pending else 0


@app.command(name="sql")
def migration_sql(*, backend: Literal["postgres", "sqlite"] = "postgres",
                  from_version: int = 1, db_schema: str | None = None) -> int:
    """Print the DDL of Soniq's migrations, each in its own transaction that also records it in
    soniq_migrations (so workers and soniq setup see it as applied). Needs no database.

    Parameters
    ----------
    backend
        Which database the SQL is for.
    from_version
        Start at this migration number (to upgrade a database that has the earlier ones).
    db_schema
        PostgreSQL: put everything in this schema (created if missing), as for an app with
        SONIQ_DB_SCHEMA set.
    """
    if db_schema is not None and (backend != "postgres" or not DB_SCHEMA.fullmatch(db_schema)):
        print_line(f"error: --db-schema {db_schema!r}: " + (
            "schemas are PostgreSQL only" if backend != "postgres" else
            "use lowercase letters, digits and _ (starting with a letter or _, at most 63 "
            "characters, not pg_*)"), err=True)
        return 2
    try:
        script = migration_script(backend, from_version=from_version, schema=db_schema)
    except ValueError as exc:
        print_line(f"error: {exc}", err=True)
        return 1
    print(script)
    return 0
