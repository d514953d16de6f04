"""``soniq worker``: run jobs until stopped by a signal."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import anyio
from cyclopts import Parameter

from soniq import __version__
from soniq.cli._common import GLOBALS, Loop, configure_logging, event_loop, load_app

if TYPE_CHECKING:
    from soniq.settings import SoniqSettings

logger = logging.getLogger("soniq.worker")

_FORCED_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
#: How long cancelled jobs get to end (they normally do at once: after the second signal, or the
#: first one's shutdown_timeout), then how long writing the give-back of those that ignore their
#: cancellation may take before the process ends without them.
FORCED_STOP_GRACE = 3.0
FORCED_STOP_WRITE_BOUND = 5.0


def _exit_now(code: int) -> NoReturn:
    """End the process without waiting for job threads or tasks that will not end."""
    logging.shutdown()  # flush the log handlers
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def worker(
    app_path: Annotated[str | None, Parameter(name="APP", env_var="SONIQ_APP")] = None,
    /,
    *,
    app: Annotated[str | None, Parameter(help="Same as APP.")] = None,
    queues: Annotated[list[str] | None, Parameter(consume_multiple=True)] = None,
    concurrency: int | None = None,
    run_once: bool = False,
    database_url: str | None = None,
    loop: Loop | None = None,
) -> int:
    """Run a worker: claim jobs from every queue (or --queues) and run them until stopped.

    The first SIGTERM or SIGINT stops claiming and lets running jobs finish within
    shutdown_timeout (SONIQ_SHUTDOWN_TIMEOUT); jobs still running then go back to the queue
    without using an attempt, and the worker exits 0. A second signal stops at once: running
    jobs go back to the queue and the exit code is 130 (SIGINT) or 143 (SIGTERM). Either way a
    job that ignores its cancellation gets 3 more seconds, then is given back all the same and
    the process ends without it; nor does it wait for the thread of a sync job that cannot be
    stopped.

    Parameters
    ----------
    app_path
        Your Soniq instance as module:attribute, e.g. myproject.jobs:app. Without it, the modules
        in SONIQ_JOBS_MODULES are imported and must define exactly one Soniq instance.
    queues
        Only these queues (comma-separated or repeated). Default: every queue (there is no
        environment fallback on purpose).
    concurrency
        Jobs run at once. Default: the app's concurrency setting (SONIQ_CONCURRENCY).
    run_once
        Run what is due now, then exit.
    database_url
        Where jobs are stored. Default: SONIQ_DATABASE_URL. Cannot override a URL the app
        passes in its own code.
    loop
        The event loop to run on (default: the global --loop, SONIQ_LOOP, else asyncio).
    """
    from soniq.settings import redact_url  # here: ``soniq worker --help`` stays quick

    soniq = load_app(app_path or app or GLOBALS.app, database_url or GLOBALS.database_url)
    backend_name = event_loop(loop)
    configure_logging(soniq.settings.log_level if not soniq.settings.debug else "DEBUG")
    queue_list = [q.strip() for item in queues or [] for q in item.split(",") if q.strip()] or None
    runner = soniq.worker(concurrency=concurrency, queues=queue_list, run_once=run_once)
    backend = soniq.backend
    logger.info(
        "soniq %s worker %s | %s | storage %s %s | queues %s | concurrency %d | %s",
        __version__, runner.id, soniq.settings.environment, backend.name,
        redact_url(soniq.settings.database_url),
        ",".join(queue_list) if queue_list else "all", runner.concurrency,
        _wake_ups(backend.supports_listen, soniq.settings),
    )
    for problem in soniq.settings.unsafe():
        logger.warning("%s", problem)
    exit_code = 0

    async def main() -> None:
        nonlocal exit_code
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

                async def give_up(after: float) -> None:
                    """Cancelled when the worker ends, as it does in time unless a job ignores
                    its cancellation (nothing else would end the process then)."""
                    await anyio.sleep(after)
                    ids = await runner.abandon(FORCED_STOP_WRITE_BOUND)
                    if ids:
                        logger.error("worker %s: %d job(s) ignore cancellation, still running "
                                     "%gs after being cancelled; exiting without them (given back "
                                     "to the queue): %s", runner.id, len(ids), FORCED_STOP_GRACE,
                                     ", ".join(ids))
                    _exit_now(exit_code)

                async def watch() -> None:
                    nonlocal exit_code
                    count = 0
                    async for signum in signals:
                        count += 1
                        if count == 1:
                            logger.info("received %s: finishing running jobs (up to %gs); send it "
                                        "again to stop now", signal.Signals(signum).name,
                                        soniq.settings.shutdown_timeout)
                            runner.stop()
                            tg.start_soon(give_up,
                                          soniq.settings.shutdown_timeout + FORCED_STOP_GRACE)
                        else:
                            logger.warning("received %s again: stopping now; running jobs go back "
                                           "to the queue", signal.Signals(signum).name)
                            exit_code = _FORCED_EXIT.get(signal.Signals(signum), 1)
                            runner.cancel()
                            tg.start_soon(give_up, FORCED_STOP_GRACE)

                tg.start_soon(watch)
                try:
                    await runner.run()
                finally:
                    tg.cancel_scope.cancel()
            # Leaving the receiver puts the default handlers back (asyncio resets them to
            # SIG_DFL), which would let the rest of a burst of signals kill the process with a
            # traceback or a signal status: the shutdown already under way is the answer to them.
            for signum in _FORCED_EXIT:
                signal.signal(signum, signal.SIG_IGN)
        await soniq.close()

    anyio.run(main, backend=backend_name)
    logger.info("worker %s stopped after %d job attempt(s)", runner.id, runner.processed)
    if runner.executor.stuck:  # the interpreter would wait for those threads at exit, forever
        logger.warning("worker %s: %d job thread(s) that could not be stopped are still running; "
                       "exiting without them", runner.id, runner.executor.stuck)
        _exit_now(exit_code)
    return exit_code


def _wake_ups(listen: bool, settings: SoniqSettings) -> str:
    """How the worker learns of new jobs, for its first log line."""
    from soniq.settings import redact_url

    if not listen:
        return f"polling every {settings.poll_interval:g}s"
    if settings.listen_url is None:
        return "LISTEN/NOTIFY + polling"
    return f"LISTEN/NOTIFY on listen_url {redact_url(settings.listen_url)} + polling"
