"""``soniq setup``: create the database if needed and apply pending migrations."""

from __future__ import annotations

from soniq.cli._common import AppPath, Target, open_app, run
from soniq.cli._output import print_line
from soniq.settings import redact_url


def setup(app_path: AppPath = None, /, *, target: Target = Target()) -> int:  # noqa: B008
    """Create the database if it does not exist and apply Soniq's pending migrations.

    Run it in your deploy pipeline before starting workers. Safe to run concurrently: migrations
    take a lock and each is applied once. With SONIQ_DB_SCHEMA set, the schema is created too
    and everything goes in it. To apply the SQL with your own migration tool instead,
    see `soniq migrations sql`.

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute (optional; default: SONIQ_APP, else a plain
        Soniq configured from SONIQ_* env).
    """
    soniq = open_app(target, app_path=app_path)
    applied = run(soniq, soniq.setup)
    where = redact_url(soniq.settings.database_url)
    if soniq.settings.db_schema is not None:
        where += f" (schema {soniq.settings.db_schema})"
    if applied:
        print_line(f"Applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        print_line(f"Schema of {where} is up to date; nothing to apply.")
    return 0
