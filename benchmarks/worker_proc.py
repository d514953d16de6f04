"""The worker under test, in its own process: ``python -m benchmarks.worker_proc SYSTEM ...``.

Protocol (one JSON object per stdout line, prefixed ``@@bench``; commands are stdin lines):

1. build the system's worker and open its connections, then print ``ready`` (with the pid);
2. on ``go``: start the worker, print ``started`` once it runs;
3. on ``stop`` (or end of input): stop it gracefully, print ``stopped`` with what the ``stamp``
   jobs recorded (job number -> epoch seconds at which the job body started), then exit.

Imports and connection set-up happen before ``go``, so the parent's clock starts at ``go``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import anyio
import anyio.to_thread

from benchmarks.databases import Target
from benchmarks.systems import load_system

__all__ = ["MARK", "main"]

MARK = "@@bench "


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(MARK + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _command() -> str:
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line.strip() or "stop"  # end of input means stop


async def _serve(args: argparse.Namespace) -> None:
    system = load_system(args.system)
    stamps: dict[int, float] = {}
    worker = await system.open_worker(Target(args.kind, args.url), args.concurrency, stamps)
    try:
        _emit("ready", pid=os.getpid())
        if await _command() != "go":
            return
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            _emit("started", at=time.time())
            await _command()
            stop_at = time.perf_counter()
            worker.stop()
        _emit("stopped", stamps=stamps, stop_seconds=time.perf_counter() - stop_at)
    finally:
        with anyio.CancelScope(shield=True):
            await worker.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_proc")
    parser.add_argument("system")
    parser.add_argument("--kind", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--loop", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    anyio.run(_serve, args, backend=args.loop)


if __name__ == "__main__":
    main()
