"""``soniq worker`` as a real subprocess: signals, crashes and racing workers.

These run on asyncio only: what is under test is the worker process, which the test drives from
outside; the in-process trio path is covered by tests/runtime.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from soniq import Soniq
from tests.helpers import wait_for, wait_for_status

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "SONIQ_HEARTBEAT_INTERVAL": "0.2",
    "SONIQ_HEARTBEAT_TIMEOUT": "1.5",
    "SONIQ_CLEANUP_INTERVAL": "0.3",
    "SONIQ_POLL_INTERVAL": "0.1",
    "SONIQ_SHUTDOWN_TIMEOUT": "10",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("sqlite_url"))


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.txt"
    path.touch()
    return path


class Workers:
    def __init__(self, url: str, ledger: Path) -> None:
        self.env = {**os.environ, **FAST, "SONIQ_DATABASE_URL": url,
                    "SONIQ_TEST_LEDGER": str(ledger), "PYTHONPATH": str(ROOT)}
        self.logs = ledger.parent
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{len(self.procs)}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "soniq", "worker", "tests.apps.chaos:app", *args],
                cwd=ROOT, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in sorted(self.logs.glob("worker-*.log")))

    async def exit_code(self, proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(proc.wait)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
async def workers(url: str, ledger: Path) -> Any:
    pool = Workers(url, ledger)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
async def app(url: str) -> Any:
    from tests.apps import chaos

    soniq = Soniq(database_url=url, enqueue_validation="none")
    for spec in chaos.app.registry:
        soniq.registry.register(spec.func, name=spec.name, retries=spec.max_retries)
    try:
        yield soniq
    finally:
        await soniq.close()


def events(ledger: Path) -> list[tuple[str, int, int, str]]:
    rows = []
    for line in ledger.read_text().splitlines():
        job_id, attempt, pid, event = line.split()
        rows.append((job_id, int(attempt), int(pid), event))
    return rows


async def started(ledger: Path, count: int = 1) -> list[tuple[str, int, int, str]]:
    def check() -> list[tuple[str, int, int, str]]:
        rows = [row for row in events(ledger) if row[3] == "start"]
        return rows if len(rows) >= count else []

    result: list[tuple[str, int, int, str]] = await wait_for(check, timeout=20,
                                                             message=f"{count} job start(s)")
    return result


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
async def test_sigterm_drains_running_jobs_and_exits_0(app: Soniq, workers: Workers, ledger: Path,
                                                        url: str, loop: str) -> None:
    job_id = await app.enqueue("sleep", seconds=1.0)
    proc = workers.start("--loop", loop, "--concurrency", "3")
    await started(ledger)
    proc.send_signal(signal.SIGTERM)
    assert await workers.exit_code(proc) == 0
    record = await app.get_job(job_id)
    assert record is not None and (record["status"], record["attempts"]) == ("done", 1)
    assert [e[3] for e in events(ledger)] == ["start", "finish"]
    assert await app.backend.list_workers() == []
    banner = workers.output().splitlines()[0]
    assert f"storage {app.backend.name}" in banner and "queues all" in banner
    assert "concurrency 3" in banner
    assert ("LISTEN" in banner) == (app.backend.name == "postgres")


async def test_jobs_modules_and_run_once(app: Soniq, workers: Workers, ledger: Path) -> None:
    ids = [await app.enqueue("noop", queue=q) for q in ("a", "b", "a")]
    env = dict(workers.env, SONIQ_JOBS_MODULES="tests.apps.chaos")
    done = await anyio.run_process(
        [sys.executable, "-m", "soniq", "worker", "--run-once", "--queues", "a"],
        cwd=ROOT, env=env, check=False)
    assert done.returncode == 0, done.stderr
    statuses = [(await app.get_job(i) or {}).get("status") for i in ids]
    assert statuses == ["done", "queued", "done"]


async def test_sigterm_past_the_grace_period_requeues_without_an_attempt(
        app: Soniq, workers: Workers, ledger: Path) -> None:
    job_id = await app.enqueue("sleep", seconds=60)
    proc = workers.start(SONIQ_SHUTDOWN_TIMEOUT="0.3")
    await started(ledger)
    proc.send_signal(signal.SIGTERM)
    assert await workers.exit_code(proc) == 0
    record = await app.get_job(job_id)
    assert record is not None and (record["status"], record["attempts"]) == ("queued", 0)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_second_signal_stops_at_once(app: Soniq, workers: Workers, ledger: Path,
                                           signum: signal.Signals, code: int) -> None:
    job_id = await app.enqueue("sleep", seconds=60)
    proc = workers.start()
    await started(ledger)
    proc.send_signal(signum)
    await anyio.sleep(0.2)  # let the first signal be handled before the second arrives
    proc.send_signal(signum)
    assert await workers.exit_code(proc, timeout=10) == code
    record = await app.get_job(job_id)
    assert record is not None and (record["status"], record["attempts"]) == ("queued", 0)


async def test_sigkill_mid_job_is_rerun_once_by_another_worker(
        app: Soniq, workers: Workers, ledger: Path) -> None:
    job_id = await app.enqueue("sleep", seconds=0.5)
    first = workers.start()
    [(_, _, pid, _)] = await started(ledger)
    first.kill()
    await workers.exit_code(first)
    workers.start()
    record = await wait_for_status(app, job_id, "done", timeout=30)
    assert record["attempts"] == 2
    assert [e["type"] for e in record["errors"]] == ["WorkerLost"]
    rows = events(ledger)
    assert [(r[1], r[3]) for r in rows] == [(1, "start"), (2, "start"), (2, "finish")]
    assert rows[0][2] == pid and rows[1][2] != pid


async def test_a_job_that_kills_its_worker_ends_in_dead_letter(
        app: Soniq, workers: Workers, ledger: Path) -> None:
    job_id = await app.enqueue("suicide")
    normal = [await app.enqueue("noop") for _ in range(5)]

    async def supervise() -> None:
        while True:
            proc = workers.start("--concurrency", "1")
            await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(supervise)
        record = await wait_for_status(app, job_id, "dead_letter", timeout=60)
        for other in normal:
            await wait_for_status(app, other, "done", timeout=30)
        tg.cancel_scope.cancel()
    workers.stop_all()
    assert record["attempts"] == 3
    assert [e["type"] for e in record["errors"]] == ["WorkerLost"] * 3
    starts = [r for r in events(ledger) if r[0] == job_id]
    assert [r[1] for r in starts] == [1, 2, 3]


async def test_two_workers_never_run_the_same_attempt(app: Soniq, workers: Workers, ledger: Path) -> None:
    procs = [workers.start("--concurrency", "5") for _ in range(2)]
    await app.ensure_initialized()

    async def both_registered() -> bool:
        return len(await app.backend.list_workers()) == 2

    await wait_for(both_registered, timeout=30, message="two workers registered")
    ids = await app.enqueue_many("nap", [{} for _ in range(600)])

    async def all_done() -> bool:
        stats = await app.get_queue_stats()
        return bool(stats) and stats[0]["done"] == len(ids)

    await wait_for(all_done, timeout=60, message="all jobs done")
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert await workers.exit_code(proc) == 0
    starts = Counter((r[0], r[1]) for r in events(ledger) if r[3] == "start")
    doubles = {key: n for key, n in starts.items() if n > 1}
    assert not doubles, f"attempts started more than once: {doubles}"
    assert len(starts) == len(ids)
    assert {r[0] for r in events(ledger)} == set(ids)
    pids = Counter(r[2] for r in events(ledger) if r[3] == "start")
    assert len(pids) == 2, f"only one worker took part: {pids}"
    # attempts equals the starts that used an attempt, for every job
    for job in await app.list_jobs(limit=1000):
        assert job["attempts"] == sum(1 for (jid, _), n in starts.items() if jid == job["id"])
