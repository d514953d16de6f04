"""``soniq setup``: create the database if needed and apply pending migrations."""

from __future__ import annotations

import anyio

from soniq.app import Soniq
from soniq.settings import redact_url


def setup(*, database_url: str | None = None) -> int:
    """Create the database if it does not exist and apply Soniq's pending migrations.

    Run it in your deploy pipeline before starting workers. Safe to run concurrently: migrations
    take a lock and each is applied once.

    Parameters
    ----------
    database_url
        Where jobs are stored (a PostgreSQL URL, or a SQLite path ending .db/.sqlite/.sqlite3).
        Default: SONIQ_DATABASE_URL, then postgresql://postgres@localhost/soniq.
    """

    async def run() -> list[str]:
        app = Soniq(database_url=database_url)
        try:
            return await app.setup()
        finally:
            await app.close()

    applied = anyio.run(run)
    target = redact_url(Soniq(database_url=database_url).settings.database_url)
    if applied:
        print(f"Applied {len(applied)} migration(s) to {target}: {', '.join(applied)}")
    else:
        print(f"Schema of {target} is up to date; nothing to apply.")
    return 0
