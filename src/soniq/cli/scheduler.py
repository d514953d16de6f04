"""``soniq scheduler``: fire recurring jobs without running any (for deployments that keep the
scheduler apart from the workers; every worker also runs it)."""

from __future__ import annotations

import logging
import signal

import anyio

from soniq.cli._common import AppPath, Loop, Target, configure_logging, event_loop, open_app
from soniq.settings import redact_url

__all__ = ["scheduler"]

logger = logging.getLogger("soniq.scheduler")


def scheduler(app_path: AppPath = None, /, *,
              loop: Loop | None = None, target: Target = Target()) -> int:  # noqa: B008
    """Run only the scheduler loop until stopped: each SONIQ_SCHEDULER_INTERVAL seconds it
    enqueues the jobs of due schedules (exactly once per fire time, however many schedulers
    and workers run). The first SIGTERM/SIGINT stops it (exit 0); nothing is left half-done.

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute (default: SONIQ_APP, or the one instance in
        SONIQ_JOBS_MODULES); its @app.periodic schedules are written to the database first.
    loop
        The event loop to run on (default: the global --loop, SONIQ_LOOP).
    """
    soniq = open_app(target, app_path=app_path, require_app=True)
    configure_logging(soniq.settings.log_level if not soniq.settings.debug else "DEBUG")
    backend = event_loop(loop)
    logger.info("soniq scheduler | storage %s %s | every %gs | %d schedule(s) declared in code",
                soniq.backend.name, redact_url(soniq.settings.database_url),
                soniq.settings.scheduler_interval, len(soniq.scheduler.definitions))

    async def main() -> str | None:
        stopped_by: str | None = None
        try:
            await soniq.ensure_initialized()  # a missing schema fails here, before the loop
            async with anyio.create_task_group() as tg:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    await tg.start(soniq.scheduler.run)
                    async for signum in signals:
                        stopped_by = signal.Signals(signum).name
                        tg.cancel_scope.cancel()
                        break
        finally:
            await soniq.close()
        return stopped_by

    stopped_by = anyio.run(main, backend=backend)
    logger.info("scheduler stopped (%s)", stopped_by)
    return 0
