"""``soniq demo``: a few hundred sample jobs run by a real worker on an embedded SQLite file.

No server and no setup: it creates ``./soniq-demo.db``, enqueues jobs that succeed, fail once and
are retried, always fail (and end dead-lettered), wait for a scheduled time, or get cancelled;
runs a worker with a live progress bar until every job is final; prints a summary and the
commands to look at the result.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import anyio
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from soniq.app import Soniq
from soniq.cli._common import UsageError, event_loop
from soniq.cli._output import console, is_terminal, print_line, print_table
from soniq.cli.status import QUEUE_COLUMNS
from soniq.errors import DatabaseError
from soniq.types import JobContext  # noqa: TC001 -- the registry reads job annotations at runtime

__all__ = ["build_demo_app", "demo"]

#: The demo gives up (exit 1) if the jobs are not all final by then.
DEADLINE = 50.0


def build_demo_app(path: str) -> Soniq:
    """The demo's app: four kinds of job with short retry delays, on the SQLite file ``path``."""
    app = Soniq(database_url=path, concurrency=32, poll_interval=0.1, heartbeat_interval=1.0,
                heartbeat_timeout=30.0, result_ttl=86_400, capture_job_logs=True,
                log_level="CRITICAL")

    @app.job(name="demo.resize_image", queue="images")
    async def resize_image(image_id: int, width: int) -> dict[str, int]:
        await anyio.sleep(random.uniform(0.005, 0.03))
        return {"image_id": image_id, "width": width, "height": width * 3 // 4}

    @app.job(name="demo.send_email", queue="emails", retries=2, retry_delay=0.2)
    async def send_email(to: str, ctx: JobContext) -> str:
        ctx.logger.info("sending the welcome email to %s (attempt %d)", to, ctx.attempt)
        await anyio.sleep(random.uniform(0.005, 0.02))
        if to.startswith("flaky") and ctx.attempt == 1:
            raise ConnectionError("SMTP server busy, try again later")
        return f"sent to {to}"

    @app.job(name="demo.sync_crm", retries=2, retry_delay=0.1)
    def sync_crm(account: int) -> None:  # a sync job: it runs in a worker thread
        raise RuntimeError(f"CRM rejected account {account}: 422 missing field 'email'")

    @app.job(name="demo.nightly_report")
    async def nightly_report() -> str:
        return "report written"

    return app


def demo(*, path: Path = Path("soniq-demo.db"), jobs: int = 300) -> int:
    """Run a worker on a few hundred sample jobs in ./soniq-demo.db (SQLite; nothing to set up).

    Some jobs succeed, some fail once and are retried, some always fail and end dead-lettered,
    some wait for a scheduled time and some are cancelled. Takes a few seconds; an existing demo
    file is replaced.

    Parameters
    ----------
    path
        The SQLite file to create.
    jobs
        How many jobs to enqueue (at least 20).
    """
    if jobs < 20:
        raise UsageError(f"--jobs must be at least 20, got {jobs}")
    if path.suffix.lower() not in (".db", ".sqlite", ".sqlite3"):
        raise UsageError(f"--path must end .db, .sqlite or .sqlite3, got {str(path)!r}")
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    app = build_demo_app(str(path))
    started = time.monotonic()
    outcome = anyio.run(_run, app, jobs, backend=event_loop())
    _summary(path, outcome, time.monotonic() - started)
    return 0


async def _enqueue(app: Soniq, total: int) -> dict[str, int]:
    rng = random.Random(7)
    failing = max(2, total // 15)
    scheduled = max(2, total // 20)
    cancelled = max(1, total // 60)
    emails = max(4, total // 5)
    images = total - failing - scheduled - cancelled - emails
    await app.enqueue_many("demo.resize_image", [
        {"image_id": i, "width": rng.choice((320, 640, 1280))} for i in range(images)])
    await app.enqueue_many("demo.send_email", [
        {"to": f"{'flaky' if i % 4 == 0 else 'user'}{i}@example.com"} for i in range(emails)])
    await app.enqueue_many("demo.sync_crm", [{"account": 1000 + i} for i in range(failing)])
    for i in range(scheduled):
        await app.enqueue("demo.send_email", to=f"later{i}@example.com",
                          scheduled_at=2.0 + 2.0 * i / scheduled)
    for i in range(cancelled):
        job_id = await app.enqueue("demo.resize_image", image_id=10_000 + i, width=64,
                                   scheduled_at=3600)
        await app.cancel_job(job_id)
    await app.scheduler.add("demo.nightly-report", cron="0 2 * * *", target="demo.nightly_report")
    return {"total": total, "retried": emails // 4 + (1 if emails % 4 else 0),
            "failing": failing, "scheduled": scheduled, "cancelled": cancelled}


async def _run(app: Soniq, total: int) -> dict[str, Any]:
    async with app:
        planned = await _enqueue(app, total)
        worker = app.worker()
        columns = (TextColumn("running demo jobs"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
        with Progress(*columns, console=console(), disable=not is_terminal(),
                      transient=False) as progress:
            bar = progress.add_task("jobs", total=total, detail="")
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                with anyio.move_on_after(DEADLINE) as deadline:
                    while True:
                        stats = await app.get_queue_stats()
                        final = sum(q["done"] + q["dead_letter"] + q["cancelled"] for q in stats)
                        dead = sum(q["dead_letter"] for q in stats)
                        progress.update(bar, completed=final, detail=f"{dead} dead-lettered")
                        if final >= total:
                            break
                        await anyio.sleep(0.1)
                worker.stop()
        if deadline.cancelled_caught:
            raise DatabaseError(f"the demo jobs did not all finish within {DEADLINE:g}s")
        stats = await app.get_queue_stats()
        dead_jobs = await app.dead_letter.list_jobs(limit=1)
        return {**planned, "stats": stats, "attempts": worker.processed,
                "dead_job": dead_jobs[0]["id"] if dead_jobs else None}


def _summary(path: Path, outcome: dict[str, Any], seconds: float) -> None:
    stats = outcome["stats"]
    totals = {key: sum(q[key] for q in stats) for key in ("done", "dead_letter", "cancelled")}
    print_line("")
    print_table(stats, QUEUE_COLUMNS, title=f"Demo finished in {seconds:.1f}s: "
                                            f"{outcome['attempts']} attempts by one worker")
    print_line(f"{totals['done']} done (including {outcome['retried']} that failed once and were "
               f"retried, and {outcome['scheduled']} that waited for their scheduled time), "
               f"{totals['dead_letter']} dead-lettered after 3 attempts, "
               f"{totals['cancelled']} cancelled.")
    url = str(path)
    dead = outcome["dead_job"] or "JOB_ID"
    print_line("")
    print_line("Try next:", style="bold")
    for command in (f"soniq status --database-url {url}",
                    f"soniq jobs list --status dead_letter --database-url {url}",
                    f"soniq inspect {dead} --database-url {url}",
                    f"soniq dead-letter replay --all --database-url {url}",
                    f"soniq schedules list --database-url {url}",
                    "soniq setup --database-url postgresql://postgres@localhost/myapp"):
        print_line(f"  {command}")
