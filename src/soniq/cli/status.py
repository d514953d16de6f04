"""``soniq status``: the queues, the workers, the job names they know and the schema version at a
glance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soniq.cli._common import AppPath, Target, open_app, run
from soniq.cli._output import print_fields, print_json, print_line, print_table
from soniq.settings import redact_url

if TYPE_CHECKING:
    from soniq.types import DatabaseInfo, JobCoverage, QueueStats

__all__ = ["status"]

QUEUE_COLUMNS = [("queue", "queue"), ("total", "total"), ("waiting", "waiting"),
                 ("queued", "queued"), ("processing", "processing"), ("done", "done"), ("dead_letter", "dead letter"),
                 ("cancelled", "cancelled")]
WORKER_COLUMNS = [("id", "id"), ("hostname", "host"), ("pid", "pid"), ("queues", "queues"),
                  ("concurrency", "concurrency"), ("started_at", "started (UTC)"),
                  ("last_heartbeat", "last heartbeat (UTC)")]
JOB_COLUMNS = [("job", "job"), ("queue", "queue"), ("live_workers", "live workers")]


def status(app_path: AppPath = None, /, *,
           json: bool = False, target: Target = Target()) -> int:  # noqa: B008
    """Show job counts per queue, the running workers, per job name how many live workers know
    it (names no live worker knows are marked: their jobs wait) and the schema version.

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute (optional; default: SONIQ_APP, else a plain
        Soniq configured from SONIQ_* env).
    json
        Print everything as one JSON object.
    """
    soniq = open_app(target, app_path=app_path)

    async def collect() -> tuple[list[QueueStats], list[dict[str, Any]], list[JobCoverage],
                                 DatabaseInfo]:
        queues = await soniq.get_queue_stats()  # a missing schema fails here, naming soniq setup
        workers = await soniq.backend.list_workers()
        jobs = await soniq.definitions.coverage()
        return queues, workers, jobs, await soniq.database_info()

    queues, workers, jobs, info = run(soniq, collect)
    url = redact_url(soniq.settings.database_url)
    applied = info["applied_migrations"]
    schema = {"version": applied[-1] if applied else None, "pending": info["pending_migrations"]}
    if json:
        print_json({"database": url, "backend": info["backend"],
                    "db_schema": soniq.settings.db_schema, "schema": schema, "queues": queues,
                    "workers": workers, "jobs": jobs})
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
    print_line("")
    print_table([{**j, "job": f"{j['name']} (no live worker)" if j["flagged"] else j["name"]}
                 for j in jobs], JOB_COLUMNS, title="Jobs", empty="no job definitions stored yet")
    flagged = [j["name"] for j in jobs if j["flagged"]]
    if flagged:
        print_line(f"warning: no live worker knows {', '.join(flagged)}: their jobs wait until "
                   "a worker that registers them starts", style="yellow")
    return 0
