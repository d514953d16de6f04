"""``soniq dashboard`` as a real process: it serves, honours --root-path, and stops on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[str], timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_soniq_dashboard_serves_a_sqlite_database(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "soniq", "dashboard", "--database-url", str(tmp_path / "jobs.db"),
         "--port", str(port), "--root-path", "/soniq"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        health = _wait_ready(f"http://127.0.0.1:{port}/api/health", process)
        assert health.json()["backend"] == "sqlite"
        assert health.json()["writes"] == "loopback only"
        page = httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=5)
        assert 'href="/soniq/static/soniq.css"' in page.text
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"Soniq dashboard at http://127.0.0.1:{port}/soniq/" in out


def test_soniq_dashboard_says_when_the_database_is_not_set_up(pg_server: str,
                                                              fresh_database: tuple[str, str],
                                                              tmp_path: Path) -> None:
    _, url = fresh_database
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    result = subprocess.run(
        [sys.executable, "-m", "soniq", "dashboard", "--database-url", url,
         "--port", str(_free_port())],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_soniq_dashboard_answers_only_allowed_host_names(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "soniq", "dashboard", "--database-url", str(tmp_path / "jobs.db"),
         "--port", str(port), "--allowed-host", "dash.example.com",
         "--allowed-host", "ops.example.com"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/api/queues"
    try:
        assert _wait_ready(url, process).status_code == 200
        for host in ("dash.example.com", f"ops.example.com:{port}", f"localhost:{port}"):
            assert httpx.get(url, headers={"Host": host}, timeout=5).status_code == 200, host
        evil = httpx.get(url, headers={"Host": f"evil.example:{port}"}, timeout=5)
        assert evil.status_code == 400 and "evil.example" in evil.json()["detail"]
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 0
