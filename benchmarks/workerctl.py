"""The parent's side of :mod:`benchmarks.worker_proc`: spawn, start, watch (RSS), stop, reap.

Also attaches py-spy to the worker when asked (``--profile``), writing a speedscope file and
collapsed stacks that :mod:`benchmarks.profiling` summarises.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from benchmarks.worker_proc import MARK

if TYPE_CHECKING:
    from anyio.abc import Process

    from benchmarks.databases import Target

__all__ = ["ROOT", "WorkerFailed", "WorkerProcess"]

ROOT = Path(__file__).resolve().parent.parent
_MAX_LINE = 64 * 1024 * 1024
_TICKS = os.sysconf("SC_CLK_TCK")


class WorkerFailed(RuntimeError):
    """The worker subprocess died or broke the protocol (the message carries its log tail)."""


class WorkerProcess:
    """``async with WorkerProcess(...) as worker:`` -- ready on entry, always reaped on exit."""

    def __init__(self, system: str, target: Target, *, concurrency: int, loop: str = "asyncio",
                 profile_to: Path | None = None) -> None:
        self._command = [sys.executable, "-m", "benchmarks.worker_proc", system,
                         "--kind", target.kind, "--url", target.url,
                         "--concurrency", str(concurrency), "--loop", loop]
        self._profile_to = profile_to
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in __aexit__
        self._process: Process | None = None
        self._stdout: BufferedByteReceiveStream | None = None
        self._spy: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.claiming_at = 0.0

    async def __aenter__(self) -> WorkerProcess:
        self._process = await anyio.open_process(self._command, stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, stderr=self._log,
                                                 cwd=ROOT)
        assert self._process.stdout is not None
        self._stdout = BufferedByteReceiveStream(self._process.stdout)
        ready = await self._expect("ready", within=60)
        self.pid = int(ready["pid"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            self._stop_profiler()
            process = self._process
            if process is not None and process.returncode is None:
                process.terminate()
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            if process is not None:
                await process.aclose()
            self._log.close()

    # -- protocol ---------------------------------------------------------------------------------
    async def go(self) -> float:
        """Start the worker; returns the epoch time just before the command was sent."""
        if self._profile_to is not None:
            await self._start_profiler(self._profile_to)
        started = time.time()
        await self._send("go")
        message = await self._expect("started", within=60)
        #: When the worker reported it was claiming (its services started), by its own clock.
        self.claiming_at = float(message["at"])
        return started

    async def stop(self, *, within: float = 90) -> dict[str, Any]:
        """Graceful stop; returns the ``stopped`` message (``stamps`` keys made ints again)."""
        self._stop_profiler()
        await self._send("stop")
        message = await self._expect("stopped", within=within)
        assert self._process is not None
        with anyio.fail_after(30):
            await self._process.wait()
        message["stamps"] = {int(k): float(v) for k, v in message.get("stamps", {}).items()}
        return message

    def cpu_seconds(self) -> float:
        """User + system CPU time the worker has used so far (/proc/<pid>/stat)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def rss_kib(self) -> int:
        """The worker's resident set size (VmRSS of /proc/<pid>/status), 0 once it is gone."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return 0
        return 0

    async def _send(self, command: str) -> None:
        assert self._process is not None and self._process.stdin is not None
        await self._process.stdin.send(command.encode() + b"\n")

    async def _expect(self, event: str, *, within: float) -> dict[str, Any]:
        assert self._stdout is not None
        try:
            with anyio.fail_after(within):
                while True:
                    raw = await self._stdout.receive_until(b"\n", _MAX_LINE)
                    line = raw.decode(errors="replace")
                    if not line.startswith(MARK):
                        continue  # a library printed something: not ours
                    message: dict[str, Any] = json.loads(line[len(MARK):])
                    if message["event"] == event:
                        return message
        except (anyio.EndOfStream, anyio.IncompleteRead, TimeoutError) as exc:
            raise WorkerFailed(f"worker never said {event!r} ({type(exc).__name__}); "
                               f"its log ends with:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 25) -> str:
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- profiling --------------------------------------------------------------------------------
    async def _start_profiler(self, path: Path) -> None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            raise WorkerFailed("--profile needs py-spy (pip install py-spy; nox -s bench has it)")
        # Raw collapsed stacks (for the summary) and, separately, nothing else: speedscope can
        # import collapsed stacks too.
        self._spy = subprocess.Popen(  # noqa: ASYNC220 -- a fire-and-forget sampler
            [spy, "record", "--pid", str(self.pid), "--rate", "250", "--format", "raw",
             "--nonblocking", "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        await anyio.sleep(0.5)  # let it attach before the clock starts

    def _stop_profiler(self) -> None:
        spy, self._spy = self._spy, None
        if spy is None:
            return
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
