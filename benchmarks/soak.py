"""``python -m benchmarks.soak``: steady load on real ``soniq worker`` processes; memory stays flat?

An opt-in run (``nox -s soak``, not part of CI or the default sessions; 10 minutes at 100 jobs/s
by default). It:

1. creates its own database ``soniq_soak_<random hex>`` on the server of ``SONIQ_BENCH_PG_URL``
   (default ``postgresql://postgres@127.0.0.1:5432/postgres``; local servers only), runs
   ``soniq setup`` on it, and drops it at the end -- also after an error, SIGINT or SIGTERM;
2. starts ``--workers`` real ``soniq worker benchmarks.soak_app:app`` subprocesses (the job mix
   is in :mod:`benchmarks.soak_app`: mostly quick async jobs, 5% failing once and retried, 1%
   timing out once, 1% sync; ``result_ttl`` 30 s, cleanup every 10 s, so finished rows are
   pruned and the table can stay flat);
3. enqueues from this process at ``--rate`` jobs/s for ``--minutes``, one ``app.enqueue`` at a
   time on a fixed schedule;
4. every ``--sample-every`` seconds reads, for the workers, RSS (``VmRSS`` of
   ``/proc/<pid>/status``), open file descriptors (``/proc/<pid>/fd``), threads, and their
   connections (rows of ``pg_stat_activity`` whose client port is one of the worker's TCP sockets
   to the server); and, for the database, ``pg_total_relation_size('soniq_jobs')``, rows by
   status, the backlog (queued jobs already due) and jobs finished so far (enqueued minus not yet
   final, since finished rows are pruned). One progress line per sample goes to stderr;
5. after the load, waits (bounded) for the queue to drain, stops the workers with SIGTERM, and
   prints a summary table: idle (before the load), start (the first sample after the warm-up)
   and end (the last sample under load).

Table size needs VACUUM as well as pruning: on a server whose ``autovacuum`` is off (as on some
test machines), the run stands in for it with ``VACUUM soniq_jobs`` every 60 s
(``--vacuum-every``; 0: never), and says so; otherwise dead rows pile up and the table grows
whatever Soniq does.

Warm-up: ``--warmup`` seconds (default 60, at most half the run). By then pools and statement
caches are full, and finished rows have started being pruned (after 30 s + up to 10 s), so the
table has its steady row count.

The exit code is 1 when a worker's RSS grew more than 10% from start to end; when a worker's open
fds or its connections at the end (the lower of the last two samples, so one burst does not count)
exceed the most seen up to the start by more than one (a pool opening its last connection late is
not a leak); when the queue did not keep up (the backlog at the end is larger than at the start by
more than 5 seconds of load, or the queue did not drain within ``--drain`` seconds after the
load); when the producer could not keep 95% of the rate; or when a worker died or did not exit 0
on SIGTERM. Each reason is printed. 130 after SIGINT/SIGTERM.

Like the benchmark suite, the run imports a snapshot of ``src/soniq`` taken at its start
(:mod:`benchmarks.source`), in this process and in the workers, so work landing in the tree
meanwhile cannot change what is measured.

``--output [DIR]`` also writes the summary as Markdown to ``DIR/soak-<timestamp>.md`` (DIR
defaults to ``benchmarks/results``); without it nothing is written.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import asyncpg

from benchmarks import machine, source
from benchmarks.cli import _say, _stop_on_signal
from benchmarks.databases import PG_SERVER_URL, fresh_postgres, server_info

if TYPE_CHECKING:
    from soniq import Soniq

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.soak_app:app"
RSS_LIMIT_PCT = 10.0
#: A worker's fds and connections may end this much above the most seen in the warm-up: a pool
#: that opens its last connection late (the claim/finish pool holds up to 3, and opens the third
#: only when a claim, a finish and a heartbeat happen at once) is not a leak; a leak keeps going.
GROWTH_SLACK = 1
#: The backlog may end this many seconds of load above where it started.
BACKLOG_SLACK_S = 5.0
#: The producer must enqueue at least this share of the planned jobs in the run's time.
PRODUCER_MIN_SHARE = 0.95
#: Each job's arguments carry this much text (a realistic small payload, not an empty row).
PAYLOAD = "soak-" * 50

_CLIENT_SOCKETS = """
SELECT client_port FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND client_port IS NOT NULL
"""
_STATUS = "SELECT status, count(*) FROM soniq_jobs GROUP BY status"
_BACKLOG = "SELECT count(*) FROM soniq_jobs WHERE status = 'queued' AND scheduled_at <= now()"
_SIZE = "SELECT pg_total_relation_size('soniq_jobs')"
_DEAD = "SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relname = 'soniq_jobs'"
_AUTOVACUUMS = """
SELECT coalesce(autovacuum_count, 0) FROM pg_stat_user_tables WHERE relname = 'soniq_jobs'
"""
_WORKERS_UP = "SELECT count(*) FROM soniq_workers WHERE pid = ANY($1::int[])"
_LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+)\s+(?P<logger>\S+): (?P<message>.*)$")


class SoakError(RuntimeError):
    """The run could not go on (a worker died, setup failed...); the message says why."""


# -- the worker processes --------------------------------------------------------------------------
def _read_status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _tcp_ports(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of each of the process's TCP sockets (IPv4 and IPv6)."""
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return []
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    found: list[tuple[int, int]] = []
    for table in ("tcp", "tcp6"):  # the process's network namespace: every socket in it
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... uid timeout inode
            if int(fields[9]) in inodes:
                found.append((int(fields[1].rpartition(":")[2], 16),
                              int(fields[2].rpartition(":")[2], 16)))
    return found


@dataclass
class WorkerReading:
    rss_kib: int
    fds: int
    threads: int
    connections: int  # rows of pg_stat_activity whose client is one of this worker's sockets


class Worker:
    """One ``soniq worker`` subprocess; its output goes to a temporary log file."""

    def __init__(self, index: int, url: str, concurrency: int, logs: Path) -> None:
        self.index = index
        self.concurrency = concurrency
        self.env = {**os.environ, "SONIQ_DATABASE_URL": url}
        self.log_path = logs / f"worker-{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log_path.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "soniq", "worker", APP,
                 "--concurrency", str(self.concurrency)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read(self, server_port: int, client_ports: Counter[int]) -> WorkerReading:
        status = _read_status(self.pid)
        try:
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            fds = 0
        # Our side of each of the worker's sockets to the server, matched against pg_stat_activity.
        ours = sum(1 for local, remote in _tcp_ports(self.pid)
                   if remote == server_port and client_ports[local])
        return WorkerReading(
            rss_kib=int(status.get("VmRSS", "0 kB").split()[0]),
            fds=fds,
            threads=int(status.get("Threads", "0")),
            connections=ours,
        )

    async def stop(self, within: float = 60) -> int | None:
        """SIGTERM (a graceful drain), then SIGKILL after ``within`` seconds; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with anyio.move_on_after(within):
                await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        """The end of the worker's log, without the retries this app causes on purpose."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        kept = [line for line in text.splitlines() if "failed attempt" not in line]
        return "\n".join(kept[-lines:]) or "(nothing but retried attempts)"

    def log_summary(self) -> dict[str, Any]:
        """Counts of what the worker logged: retried attempts (expected here), dead letters, stuck
        threads, other warnings and errors (with the first few of those)."""
        counts: Counter[str] = Counter()
        unexpected: list[str] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            if line.startswith("Traceback"):
                counts["tracebacks"] += 1
            match = _LOG_LINE.match(line)
            if match is None or match["level"] not in ("WARNING", "ERROR", "CRITICAL"):
                continue
            message = match["message"]
            if "failed attempt" in message:
                counts["retried"] += 1
            elif "dead-lettered" in message:
                counts["dead_lettered"] += 1
            elif " is stuck" in message or "stuck thread" in message:
                counts["stuck"] += 1
            else:
                counts[match["level"].lower()] += 1
                if len(unexpected) < 5:
                    unexpected.append(line[:300])
        return {"counts": dict(counts), "unexpected": unexpected}


# -- samples ---------------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float  # seconds since the load started (0: idle, before it)
    workers: list[WorkerReading]
    db_connections: int  # every session on the soak database but the probe's
    table_bytes: int
    dead_tuples: int  # pg_stat_user_tables.n_dead_tup (the statistics lag up to a second)
    statuses: dict[str, int]
    backlog: int  # queued and due: waiting for a worker
    enqueued: int
    finished: int  # enqueued minus not yet final (finished rows get pruned, so not counted)

    @property
    def rss_kib(self) -> int:
        return sum(w.rss_kib for w in self.workers)

    @property
    def fds(self) -> int:
        return sum(w.fds for w in self.workers)

    @property
    def threads(self) -> int:
        return sum(w.threads for w in self.workers)

    @property
    def connections(self) -> int:
        return sum(w.connections for w in self.workers)


@dataclass
class Counts:
    enqueued: int = 0
    errors: list[str] = field(default_factory=list)


async def _sample(probe: Any, workers: list[Worker], server_port: int, t: float,
                  counts: Counts) -> Sample:
    enqueued = counts.enqueued  # before the query: a job enqueued meanwhile is merely "pending"
    statuses = {row[0]: int(row[1]) for row in await probe.fetch(_STATUS)}
    backlog = int(await probe.fetchval(_BACKLOG))
    table_bytes = int(await probe.fetchval(_SIZE))
    dead_tuples = int(await probe.fetchval(_DEAD) or 0)
    client_ports = Counter(int(row[0]) for row in await probe.fetch(_CLIENT_SOCKETS))
    for worker in workers:
        if not worker.alive():
            raise SoakError(f"worker {worker.index} (pid {worker.pid}) exited with "
                            f"{worker.proc.returncode if worker.proc else '?'}; its log ends "
                            f"with:\n{worker.log_tail()}")
    readings = [worker.read(server_port, client_ports) for worker in workers]
    pending = statuses.get("queued", 0) + statuses.get("processing", 0)
    return Sample(t=t, workers=readings, db_connections=sum(client_ports.values()),
                  table_bytes=table_bytes, dead_tuples=dead_tuples, statuses=statuses,
                  backlog=backlog,
                  enqueued=enqueued, finished=max(0, enqueued - pending))


def _mib(kib_or_bytes: float, *, unit: str = "kib") -> str:
    value = kib_or_bytes / 1024 if unit == "kib" else kib_or_bytes / 1024 / 1024
    return f"{value:.1f} MiB"


def _rows(statuses: dict[str, int]) -> str:
    order = ("queued", "processing", "done", "dead_letter", "cancelled")
    return " ".join(f"{s}={statuses[s]:,}" for s in order if statuses.get(s)) or "(none)"


def _progress(sample: Sample, previous: Sample | None) -> str:
    rate = ""
    if previous is not None and sample.t > previous.t:
        rate = f" ({(sample.finished - previous.finished) / (sample.t - previous.t):,.1f}/s)"
    label = "idle" if sample.t == 0 else f"{sample.t:4.0f}s"
    return (f"[{label}] RSS {_mib(sample.rss_kib)}, fds {sample.fds}, threads {sample.threads}, "
            f"worker conns {sample.connections} (db {sample.db_connections}) | soniq_jobs "
            f"{_mib(sample.table_bytes, unit='bytes')}, rows {_rows(sample.statuses)}, dead "
            f"{sample.dead_tuples:,}, backlog "
            f"{sample.backlog:,} | enqueued {sample.enqueued:,}, finished {sample.finished:,}"
            f"{rate}")


# -- load ------------------------------------------------------------------------------------------
async def _produce(app: Soniq, rate: float, seconds: float, counts: Counts) -> None:
    """``rate`` jobs a second for ``seconds``: job ``i`` is due at ``i / rate``; a producer that
    falls behind catches up without sleeping (and the summary says if it could not)."""
    from benchmarks.soak_app import job_for

    total = int(rate * seconds)
    start = anyio.current_time()
    for i in range(total):
        delay = start + i / rate - anyio.current_time()
        if delay > 0:
            await anyio.sleep(delay)
        await app.enqueue(job_for(i), i=i, payload=PAYLOAD)
        counts.enqueued += 1


async def _vacuum(url: str, every: float, out: Outcome) -> None:
    """``VACUUM soniq_jobs`` every ``every`` seconds, on a connection of its own: what autovacuum
    would do (its default naptime is 60 s) on a server where it is off."""
    conn = await asyncpg.connect(url, server_settings={"application_name": "soniq soak vacuum"})
    try:
        while True:
            await anyio.sleep(every)
            await conn.execute("VACUUM soniq_jobs")
            out.vacuums += 1
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


async def _wait_for_workers(probe: Any, workers: list[Worker], within: float = 60) -> None:
    pids = [worker.pid for worker in workers]
    with anyio.move_on_after(within):
        while int(await probe.fetchval(_WORKERS_UP, pids)) < len(pids):
            for worker in workers:
                if not worker.alive():
                    raise SoakError(f"worker {worker.index} exited at start; its log ends with:\n"
                                    f"{worker.log_tail()}")
            await anyio.sleep(0.2)
        return
    raise SoakError(f"the workers did not register within {within:g}s; the first's log ends "
                    f"with:\n{workers[0].log_tail()}")


async def _drain(probe: Any, within: float) -> float | None:
    """Seconds until nothing is queued or processing, or None if that takes over ``within``."""
    started = time.monotonic()
    with anyio.move_on_after(within):
        while True:
            rows = dict(await probe.fetch(_STATUS))
            if not rows.get("queued") and not rows.get("processing"):
                return time.monotonic() - started
            await anyio.sleep(0.2)
    return None


# -- verdict and summary ---------------------------------------------------------------------------
@dataclass
class Outcome:
    idle: Sample
    samples: list[Sample]  # under load, t > 0
    start_index: int
    drained_in: float | None = None
    exit_codes: list[int | None] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    autovacuum: str = "?"  # the server's setting
    autovacuums: int = 0  # rounds autovacuum ran on soniq_jobs
    vacuum_every: float = 0.0  # the soak's own VACUUM soniq_jobs, standing in for autovacuum
    vacuums: int = 0
    interrupted: bool = False
    logs_dir: Path | None = None

    @property
    def start(self) -> Sample:
        return self.samples[self.start_index]

    @property
    def end(self) -> Sample:
        return self.samples[-1]

    def throughput(self, index: int) -> float | None:
        """Jobs finished per second in the interval ending at sample ``index``."""
        sample = self.samples[index]
        previous = self.samples[index - 1] if index > 0 else self.idle
        if sample.t <= previous.t:
            return None
        return (sample.finished - previous.finished) / (sample.t - previous.t)


def _failures(out: Outcome, args: argparse.Namespace) -> list[str]:
    problems: list[str] = []
    start, end = out.start, out.end
    warm = [out.idle, *out.samples[: out.start_index + 1]]
    tail = out.samples[-2:] if len(out.samples) - out.start_index > 2 else out.samples[-1:]
    for n in range(len(start.workers)):
        name = f"worker {n}" if len(start.workers) > 1 else "the worker"
        before, after = start.workers[n].rss_kib, end.workers[n].rss_kib
        growth = (after - before) / before * 100 if before else 0.0
        if growth > RSS_LIMIT_PCT:
            problems.append(f"{name}'s RSS grew {growth:+.1f}% after the warm-up "
                            f"({_mib(before)} -> {_mib(after)}; limit {RSS_LIMIT_PCT:g}%)")
        for what, label in (("fds", "open fds"), ("connections", "connections")):
            most = max(getattr(s.workers[n], what) for s in warm)
            now = min(getattr(s.workers[n], what) for s in tail)
            if now > most + GROWTH_SLACK:
                problems.append(f"{name}'s {label} grew: {now} at the end, at most {most} up "
                                f"to the end of the warm-up (allowed: +{GROWTH_SLACK})")
    slack = max(args.rate * BACKLOG_SLACK_S, 10.0)
    if end.backlog > start.backlog + slack:
        problems.append(f"the queue did not keep up: backlog {start.backlog:,} -> {end.backlog:,} "
                        f"jobs (allowed: +{slack:,.0f}, {BACKLOG_SLACK_S:g}s of load)")
    if out.drained_in is None and not out.interrupted:
        problems.append(f"the queue did not drain within {args.drain:g}s after the load stopped")
    planned = args.rate * end.t
    if end.enqueued < PRODUCER_MIN_SHARE * planned:
        problems.append(f"the producer fell behind: {end.enqueued:,} jobs enqueued in {end.t:.0f}s, "
                        f"{planned:,.0f} planned")
    for n, code in enumerate(out.exit_codes):
        if code != 0 and not out.interrupted:
            problems.append(f"worker {n} exited {code} on SIGTERM (expected 0)")
    return problems


def _change(before: float, after: float, *, pct: bool) -> str:
    if pct:
        return f"{(after - before) / before * 100:+.1f}%" if before else "—"
    return f"{after - before:+,.0f}"


def _table_row(label: str, cells: list[str], change: str) -> str:
    return f"| {label} | {' | '.join(cells)} | {change} |"


def _markdown(out: Outcome, args: argparse.Namespace, meta: dict[str, Any],
              problems: list[str]) -> str:
    idle, start, end = out.idle, out.start, out.end
    points = (idle, start, end)
    workers = args.workers
    who = "the worker" if workers == 1 else f"{workers} workers, summed"
    start_tp, end_tp = out.throughput(out.start_index), out.throughput(len(out.samples) - 1)
    rows = [
        _table_row("RSS", [_mib(p.rss_kib) for p in points],
                   _change(start.rss_kib, end.rss_kib, pct=True)),
        _table_row("open fds", [str(p.fds) for p in points],
                   _change(start.fds, end.fds, pct=False)),
        _table_row("threads", [str(p.threads) for p in points],
                   _change(start.threads, end.threads, pct=False)),
        _table_row("connections (pg_stat_activity)", [str(p.connections) for p in points],
                   _change(start.connections, end.connections, pct=False)),
        _table_row("soniq_jobs total size", [_mib(p.table_bytes, unit="bytes") for p in points],
                   _change(start.table_bytes, end.table_bytes, pct=True)),
        _table_row("soniq_jobs rows", [_rows(p.statuses) for p in points],
                   _change(sum(start.statuses.values()), sum(end.statuses.values()), pct=False)),
        _table_row("soniq_jobs dead tuples", [f"{p.dead_tuples:,}" for p in points],
                   _change(start.dead_tuples, end.dead_tuples, pct=False)),
        _table_row("backlog (queued, due)", [f"{p.backlog:,}" for p in points],
                   _change(start.backlog, end.backlog, pct=False)),
    ]
    if start_tp is not None and end_tp is not None:
        rows.append(_table_row("throughput (finished/s, preceding interval)",
                               ["—", f"{start_tp:,.1f}", f"{end_tp:,.1f}"],
                               _change(start_tp, end_tp, pct=True)))
    window = end.t - start.t
    steady = (end.finished - start.finished) / window if window > 0 else 0.0
    after_warmup = [s.rss_kib for s in out.samples[out.start_index:]]
    sizes = [s.table_bytes for s in out.samples[out.start_index:]]
    second_half = [s.table_bytes for s in out.samples if s.t >= end.t / 2]
    drained = (f"the queue drained {out.drained_in:.1f} s after the load stopped"
               if out.drained_in is not None else "the queue did not drain")
    notes = [
        (f"- Jobs: {end.enqueued:,} enqueued in {end.t:.0f} s ({end.enqueued / end.t:,.1f}/s of "
         f"{args.rate:g} planned); {steady:,.1f} finished/s from start to end; {drained}."),
        (f"- RSS from start to end ranged {_mib(min(after_warmup))} – {_mib(max(after_warmup))} "
         f"({len(after_warmup)} samples, every {args.sample_every:g} s)."),
        (f"- soniq_jobs total size from start to end ranged {_mib(min(sizes), unit='bytes')} – "
         f"{_mib(max(sizes), unit='bytes')}; over the second half of the run "
         f"{_mib(min(second_half), unit='bytes')} – {_mib(max(second_half), unit='bytes')}."),
        (f"- soniq_jobs: finished rows live 30 s and are pruned every 10 s. Autovacuum is "
         f"{out.autovacuum} on this server and ran {out.autovacuums} time(s) on the table"
         + (f"; in its place the soak ran `VACUUM soniq_jobs` every {out.vacuum_every:g} s "
            f"({out.vacuums} time(s))." if out.vacuum_every else
            "; the soak ran no VACUUM of its own.")),
    ]
    for n, log in enumerate(out.logs):
        counts = log["counts"]
        code = out.exit_codes[n] if n < len(out.exit_codes) else "?"
        notes.append(
            f"- {'Worker' if workers == 1 else f'Worker {n}'} log: "
            f"{counts.get('retried', 0):,} failed attempts retried (expected: the flaky and "
            f"timing-out jobs), {counts.get('dead_lettered', 0)} dead-lettered, "
            f"{counts.get('stuck', 0)} stuck threads, {counts.get('warning', 0)} other warnings, "
            f"{counts.get('error', 0) + counts.get('critical', 0)} errors, "
            f"{counts.get('tracebacks', 0)} tracebacks; exit code {code}.")
        notes.extend(f"    - `{line}`" for line in log["unexpected"])
    if problems:
        verdict = ["**FAIL**:", *(f"- {problem}" for problem in problems)]
    else:
        verdict = [(f"**PASS**: RSS within {RSS_LIMIT_PCT:g}% after the warm-up, fds and "
                    "connections did not grow, the queue kept up.")]
    interrupted = " **Interrupted.**" if out.interrupted else ""
    lines = [
        (f"# Soniq soak: {args.minutes:g} min at {args.rate:g} jobs/s, {workers} worker(s) "
         f"(concurrency {args.concurrency})"),
        "",
        (f"Started {meta['started']}; git {meta['git']}; {meta['machine']}; PostgreSQL "
         f"{meta['postgres']}; load average {meta['loadavg_start']} -> {meta['loadavg_end']}."
         f"{interrupted}"),
        "",
        (f"| ({who}) | idle (before load) | start ({start.t:.0f} s, after warm-up) "
         f"| end ({end.t:.0f} s) | start → end |"),
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        *notes,
        "",
        *verdict,
    ]
    return "\n".join(lines) + "\n"


# -- the run ---------------------------------------------------------------------------------------
async def _soak(args: argparse.Namespace, out_box: list[Outcome]) -> None:
    duration = args.minutes * 60
    warmup = _warmup(args)
    server_port = urlsplit(PG_SERVER_URL).port or 5432
    async with fresh_postgres(prefix="soniq_soak_") as target:
        url = target.url
        _say(f"database {url.rpartition('/')[2]} on {urlsplit(url).hostname}:{server_port}")
        setup = await anyio.run_process([sys.executable, "-m", "soniq", "setup", "--database-url",
                                         url], cwd=ROOT, check=False)
        if setup.returncode != 0:
            raise SoakError(f"soniq setup failed ({setup.returncode}):\n"
                            f"{(setup.stdout + setup.stderr).decode(errors='replace')}")
        os.environ["SONIQ_DATABASE_URL"] = url  # for the producer's app (module-level Soniq())
        from benchmarks.soak_app import app

        logs = Path(tempfile.mkdtemp(prefix="soniq_soak_logs_"))
        workers = [Worker(n, url, args.concurrency, logs) for n in range(args.workers)]
        probe = await asyncpg.connect(url, server_settings={"application_name": "soniq soak probe"})
        try:
            for worker in workers:
                worker.start()
            await _wait_for_workers(probe, workers)
            _say(f"{len(workers)} worker(s) up (pid {', '.join(str(w.pid) for w in workers)}; "
                 f"logs in {logs}); {args.rate:g} jobs/s for {duration:g}s, a sample every "
                 f"{args.sample_every:g}s, warm-up {warmup:g}s")
            autovacuum = str(await probe.fetchval("SHOW autovacuum"))
            vacuum_every = (args.vacuum_every if args.vacuum_every is not None
                            else 60.0 if autovacuum == "off" else 0.0)
            if vacuum_every:
                _say(f"autovacuum is {autovacuum} on this server: this run vacuums soniq_jobs "
                     f"every {vacuum_every:g}s in its place (--vacuum-every 0: never)")
            counts = Counts()
            idle = await _sample(probe, workers, server_port, 0.0, counts)
            _say(_progress(idle, None))
            samples: list[Sample] = []
            out = Outcome(idle=idle, samples=samples, start_index=0, logs_dir=logs,
                          autovacuum=autovacuum, vacuum_every=vacuum_every)
            out_box.append(out)
            async with anyio.create_task_group() as maintenance:
                if vacuum_every:
                    maintenance.start_soon(_vacuum, url, vacuum_every, out)
                async with anyio.create_task_group() as load:
                    began = anyio.current_time()
                    load.start_soon(_produce, app, args.rate, duration, counts)
                    times = [args.sample_every * k
                             for k in range(1, int(duration // args.sample_every) + 1)]
                    if not times or times[-1] < duration - 1e-6:
                        times.append(duration)
                    for t in times:
                        await anyio.sleep_until(began + t)
                        sample = await _sample(probe, workers, server_port, t, counts)
                        samples.append(sample)
                        _say(_progress(sample, samples[-2] if len(samples) > 1 else idle))
                    # the producer ends on its own (its last job is due just before ``duration``)
                maintenance.cancel_scope.cancel()
            _say("load stopped; waiting for the queue to drain")
            out.drained_in = await _drain(probe, args.drain)
            out.autovacuums = int(await probe.fetchval(_AUTOVACUUMS) or 0)
        finally:
            with anyio.CancelScope(shield=True):
                codes = [await worker.stop() for worker in workers]
                if out_box:
                    out_box[0].exit_codes = codes
                    out_box[0].logs = [worker.log_summary() for worker in workers]
                await probe.close()
                await app.close()


def _warmup(args: argparse.Namespace) -> float:
    return float(min(args.warmup, args.minutes * 60 / 2))


def _first_after(samples: list[Sample], warmup: float) -> int:
    for index, sample in enumerate(samples):
        if sample.t >= warmup:
            return index
    return 0


async def _run(args: argparse.Namespace, digest: str) -> int:
    described = machine.describe()
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": f"{machine.git_revision(ROOT)}, source snapshot {digest}",
        "machine": f"{described['nproc']} CPUs ({described['cpu']}), {described['memory_gib']} "
                   f"GiB, Python {described['python']}",
        "postgres": (await server_info())["version"].split(" on ")[0].removeprefix("PostgreSQL "),
        "loadavg_start": described["loadavg"],
    }
    box: list[Outcome] = []
    stopped: list[int] = []
    failure: str | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope, stopped)
            await _soak(args, box)
            tg.cancel_scope.cancel()
    except* SoakError as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):  # nested task groups nest the groups
            first = first.exceptions[0]
        failure = str(first)
    meta["loadavg_end"] = machine.describe()["loadavg"]
    if failure is not None:
        _say(f"soak run failed: {failure}")
    if not box or len(box[0].samples) < 2:
        _say("too few samples for a summary")
        return 130 if stopped else 1
    out = box[0]
    out.interrupted = bool(stopped) or failure is not None
    out.start_index = min(_first_after(out.samples, _warmup(args)),
                          len(out.samples) - 2)
    problems = _failures(out, args)
    if failure is not None:
        problems.insert(0, failure.splitlines()[0])
    text = _markdown(out, args, meta, problems)
    print(text, flush=True)
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        path = args.output / f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.md"
        path.write_text(text)
        _say(f"wrote {path}")
    if stopped:
        return 130
    for problem in problems:
        _say(f"FAIL: {problem}")
    if problems:
        _say(f"the workers' logs are kept in {out.logs_dir}")
        return 1
    if out.logs_dir is not None:
        shutil.rmtree(out.logs_dir, ignore_errors=True)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="Steady load on real `soniq worker` processes for a while; reports worker "
                    "memory, fds, connections and the jobs table's size at start and end, and "
                    "fails when memory grows (PostgreSQL on 127.0.0.1; SONIQ_BENCH_PG_URL).",
        epilog="Exit codes: 0 steady, 1 something grew or fell behind (printed), 130 interrupted.")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load (10)")
    parser.add_argument("--rate", type=float, default=100.0, help="jobs enqueued per second (100)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs at once per worker (10)")
    parser.add_argument("--sample-every", type=float, default=30.0, metavar="SECONDS",
                        help="seconds between samples (30)")
    parser.add_argument("--warmup", type=float, default=60.0, metavar="SECONDS",
                        help="the start is the first sample at least this far into the load "
                             "(60, at most half the run)")
    parser.add_argument("--vacuum-every", type=float, default=None, metavar="SECONDS",
                        help="run VACUUM soniq_jobs this often (default: every 60 s when the "
                             "server's autovacuum is off, else never; 0: never)")
    parser.add_argument("--drain", type=float, default=60.0, metavar="SECONDS",
                        help="how long the queue may take to drain after the load (60)")
    parser.add_argument("--output", type=Path, nargs="?", default=None,
                        const=ROOT / "benchmarks" / "results", metavar="DIR",
                        help="also write the summary to DIR/soak-<timestamp>.md (DIR: "
                             "benchmarks/results); default: write nothing")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_every <= 0 or args.warmup < 0:
        parser.error("--minutes, --rate and --sample-every must be positive, --warmup >= 0")
    if args.workers < 1 or args.concurrency < 1:
        parser.error("--workers and --concurrency must be at least 1")
    if args.minutes * 60 < 2 * args.sample_every:
        parser.error("the run must last at least two samples (--minutes vs --sample-every)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    digest = source.freeze(ROOT)  # before anything imports soniq
    return anyio.run(_run, args, digest)


if __name__ == "__main__":
    raise SystemExit(main())
