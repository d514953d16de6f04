"""``soniq status``: the queues, the workers and the schema version at a glance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.cli._common import AppPath, Target, open_app, run
from soniq.cli._output import print_fields, print_json, print_line, print_table
from soniq.settings import redact_url

if TYPE_CHECKING:
    from soniq.types import DatabaseInfo, QueueStats

__all__ = ["status"]

QUEUE_COLUMNS = [("queue", "queue"), ("total", "total"), ("queued", "queued"),
                 ("processing", "processing"), ("done", "done"), ("dead_letter", "dead letter"),
                 ("cancelled", "cancelled")]
WORKER_COLUMNS = [("id", "id"), ("hostname", "host"), ("pid", "pid"), ("queues", "queues"),
                  ("concurrency", "concurrency"), ("started_at", "started (UTC)"),
                  ("last_heartbeat", "last heartbeat (UTC)")]


def status(app_path: AppPath = None, /, *,
           json: bool = False, target: Target = Target()) -> int:  # noqa: B008
    """Show job counts per queue, the running workers and the schema version.

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute (optional; default: SONIQ_APP, else a plain
        Soniq configured from SONIQ_* env).
    json
        Print everything as one JSON object.
    """
    soniq = open_app(target, app_path=app_path)

    async def collect() -> tuple[list[QueueStats], list[dict[str, Any]], DatabaseInfo]:
        queues = await soniq.get_queue_stats()  # a missing schema fails here, naming soniq setup
        workers = await soniq.backend.list_workers()
        return queues, workers, await soniq.database_info()

    queues, workers, info = run(soniq, collect)
    url = redact_url(soniq.settings.database_url)
    applied = info["applied_migrations"]
    schema = {"version": applied[-1] if applied else None, "pending": info["pending_migrations"]}
    if json:
        print_json({"database": url, "backend": info["backend"],
                    "db_schema": soniq.settings.db_schema, "schema": schema, "queues": queues,
                    "workers": workers})
        return 0
    pending = info["pending_migrations"]
    in_schema = ("" if soniq.settings.db_schema is None
                 else f", schema {soniq.settings.db_schema}")
    print_fields([
        ("database", f"{url} ({info['server_version'] or info['backend']}{in_schema})"),
        ("schema", f"{schema['version'] or 'none'}" + (
            f" ({len(pending)} pending: run soniq setup)" if pending else " (up to date)")),
        ("workers", len(workers)),
    ])
    print_line("")
    print_table(queues, QUEUE_COLUMNS, title="Queues", empty="no jobs yet")
    if workers:
        print_line("")
        rows = [{**w, "queues": w["queues"] or "all"} for w in workers]
        print_table(rows, WORKER_COLUMNS, title="Workers")
    return 0
