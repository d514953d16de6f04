"""Real ``soniq worker`` subprocesses running tests/apps/chaos.py, started through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[2]

#: Short intervals so that rescues and polls happen within a test's patience.
FAST = {
    "SONIQ_HEARTBEAT_INTERVAL": "0.2",
    "SONIQ_HEARTBEAT_TIMEOUT": "1.5",
    "SONIQ_CLEANUP_INTERVAL": "0.3",
    "SONIQ_POLL_INTERVAL": "0.1",
    "SONIQ_ERROR_RETRY_DELAY": "0.2",
    "SONIQ_SHUTDOWN_TIMEOUT": "10",
}


class Workers:
    """Starts workers (logs in ``logs/worker-N.log``); ``stop_all()`` kills leftovers."""

    def __init__(self, url: str, ledger_url: str, logs: Path) -> None:
        self.env = {**os.environ, **FAST, "SONIQ_DATABASE_URL": url,
                    "SONIQ_TEST_LEDGER_URL": ledger_url, "PYTHONPATH": str(ROOT)}
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, url: str | None = None, app: str = "tests.apps.chaos:app",
              **env: str) -> subprocess.Popen[bytes]:
        """``soniq worker APP *args`` (the chaos app by default), on ``url`` or the default
        database."""
        if url is not None:
            env["SONIQ_DATABASE_URL"] = url
        log = self.logs / f"worker-{len(self.procs)}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "soniq", "worker", app, *args],
                cwd=ROOT, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes] | None = None) -> str:
        if proc is not None:
            return (self.logs / f"worker-{self.procs.index(proc)}.log").read_text(errors="replace")
        return "\n".join(log.read_text(errors="replace")
                         for log in sorted(self.logs.glob("worker-*.log")))

    async def exit_code(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        except TimeoutError:
            raise AssertionError(f"worker {proc.pid} still running after {timeout}s:\n"
                                 f"{self.output(proc)[-3000:]}") from None

    async def stop(self, *procs: subprocess.Popen[bytes], timeout: float = 30) -> None:
        """SIGTERM (graceful drain) and wait; each must exit 0."""
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            code = await self.exit_code(proc, timeout)
            assert code == 0, f"worker {proc.pid} exited {code}:\n{self.output(proc)[-3000:]}"

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
