"""Start an example's ASGI app under a real uvicorn process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(check: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@contextmanager
def uvicorn(app: str, *, env: dict[str, str], cwd: Path) -> Iterator[httpx.Client]:
    """Serve ``app`` (``module:attribute`` in examples/) with uvicorn and yield a client for it."""
    port = free_port()
    with http_server([sys.executable, "-m", "uvicorn", app, "--app-dir", str(EXAMPLES), "--host",
                      "127.0.0.1", "--port", str(port), "--lifespan", "on", "--log-level",
                      "warning"], port=port, env=env, cwd=cwd) as client:
        yield client


@contextmanager
def process(args: list[str], *, env: dict[str, str], cwd: Path,
            tracebacks: bool = False) -> Iterator[subprocess.Popen[str]]:
    """Run ``args``; on exit stop it with SIGINT (as Ctrl-C would) and require a clean exit
    (and, unless ``tracebacks``, no traceback in its output)."""
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            raise AssertionError(f"{args} did not stop on SIGINT:\n{output}") from None
    assert proc.returncode == 0, f"{args} exited with {proc.returncode}:\n{output}"
    assert tracebacks or "Traceback" not in output, output


@contextmanager
def http_server(args: list[str], *, port: int, env: dict[str, str],
                cwd: Path) -> Iterator[httpx.Client]:
    """Run the server ``args`` listening on ``port`` and yield a client once it answers."""
    with process(args, env=env, cwd=cwd) as proc, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

        def up() -> bool:
            if proc.poll() is not None:
                output = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"{args} exited with {proc.returncode}:\n{output}")
            try:
                client.get("/")
            except httpx.TransportError:
                return False
            return True

        poll(up, what=f"{args[2:4]} to serve")
        yield client
