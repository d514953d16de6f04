"""``python -m benchmarks``: run the plan step by step, report progress on stderr, write results.

Results: ``benchmarks/results/<timestamp>.json`` (every step of every run, rewritten after each
step so an interrupted run keeps what it measured) and ``<timestamp>.md`` (the tables, also
printed on stdout). With ``--profile``, py-spy samples every worker step and the Markdown gets a
summary of where each worker spent its time.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from benchmarks import machine, source
from benchmarks.databases import PG_SERVER_URL, fresh_postgres, fresh_sqlite, server_info
from benchmarks.plan import FULL, GROUPS, QUICK, Step, build_plan
from benchmarks.profiling import summarize
from benchmarks.report import markdown
from benchmarks.systems import PEERS, load_system, missing_reason
from benchmarks.workerctl import ROOT

__all__ = ["main"]

#: No single step may run longer than this (a bound, not an expectation).
STEP_TIMEOUT = 20 * 60.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Soniq's benchmark suite (PostgreSQL on 127.0.0.1; SONIQ_BENCH_PG_URL).")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one run (under two minutes)")
    parser.add_argument("--no-peers", action="store_true", help="skip PgQueuer and Procrastinate")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated groups to run (default: all): {', '.join(GROUPS)}")
    parser.add_argument("--runs", type=int, default=None, help="runs per measurement (median)")
    parser.add_argument("--profile", action="store_true",
                        help="sample every worker step with py-spy and summarise it")
    parser.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                        help="before each step wait up to this long for other work on the "
                             "machine to quieten (default: 20 full, 0 quick)")
    parser.add_argument("--retries", type=int, default=None, metavar="N",
                        help="measure a step again (up to N times) when other work used more "
                             f"than {machine.NOISY_PCT:.0f}%% of a core during it (default: 2 "
                             "full, 0 quick)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    return args


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _headline(metrics: dict[str, Any]) -> str:
    if "p50_ms" in metrics:
        return f"p50 {metrics['p50_ms']:.2f} ms, p99 {metrics['p99_ms']:.2f} ms"
    if "processed_per_s" in metrics:
        return f"{metrics['processed_per_s']:,.0f} jobs/s processed"
    if "rate_set" in metrics:
        return (f"{metrics['jobs_per_s']:,.0f} starts/s of {metrics['rate_set']:,.0f}/s set "
                f"({metrics['achieved_pct']:.1f}%)")
    if "growth_pct" in metrics:
        return f"RSS {metrics['rss_start_mib']:.1f} -> {metrics['rss_end_mib']:.1f} MiB"
    return f"{metrics.get('jobs_per_s', 0):,.0f} jobs/s"


async def _run_step(step: Step, profile_to: Path | None) -> dict[str, Any]:
    fresh = fresh_postgres if step.backend == "postgres" else fresh_sqlite
    async with fresh() as target:
        with anyio.fail_after(STEP_TIMEOUT):
            return await step.measure(target, profile_to)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the error, looking through task groups' single-error wrappers."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _slug(step: Step) -> str:
    return step.label.replace(" ", "_").replace("/", "-").replace("[", "").replace("]", "")


class _Session:
    """One run of the plan: executes steps in order and keeps the JSON up to date."""

    def __init__(self, args: argparse.Namespace, plan: list[Step], meta: dict[str, Any],
                 json_path: Path, profile_dir: Path) -> None:
        self.args, self.plan, self.meta = args, plan, meta
        self.json_path, self.profile_dir = json_path, profile_dir
        self.records: list[dict[str, Any]] = []
        self.profiles: dict[str, str] = {}
        self.begin = time.monotonic()
        quick_default = 0.0 if args.quick else 20.0
        self.wait_quiet = args.wait_quiet if args.wait_quiet is not None else quick_default
        self.retries = args.retries if args.retries is not None else (0 if args.quick else 2)

    def save(self) -> None:
        self.meta["seconds"] = time.monotonic() - self.begin
        self.json_path.write_text(json.dumps({"meta": self.meta, "records": self.records},
                                             indent=1))

    async def execute(self) -> None:
        for index, step in enumerate(self.plan, 1):
            await self._step(index, step)

    async def _step(self, index: int, step: Step) -> None:
        profile_to = None
        if self.args.profile and step.profiled:
            self.profile_dir.mkdir(exist_ok=True)
            profile_to = self.profile_dir / f"{_slug(step)}_run{step.run + 1}.txt"
        for attempt in range(self.retries + 1):
            busy = await (machine.wait_quiet(self.wait_quiet) if self.wait_quiet > 0
                          else machine.background_busy(0.3))
            started, others = time.monotonic(), machine.OthersMeter()
            record: dict[str, Any] = {
                "scenario": step.scenario, "system": step.system, "backend": step.backend,
                "loop": step.loop, "params": dict(step.params), "run": step.run + 1,
                "busy": round(busy, 3), "metrics": {}, "error": None, "attempt": attempt + 1,
            }
            try:
                record["metrics"] = await _run_step(step, profile_to)
                outcome = _headline(record["metrics"])
            except Exception as exc:  # one failure (a peer's, say) must not end the run
                record["error"] = _describe(exc)
                outcome = f"FAILED {record['error'].splitlines()[0][:200]}"
            record["seconds"] = round(time.monotonic() - started, 2)
            record["others_pct"] = round(others.others_pct(), 1)
            noisy = record["others_pct"] > machine.NOISY_PCT
            note = f", other work used {record['others_pct']:.0f}% of a core" if noisy else ""
            _say(f"[{index}/{len(self.plan)} {time.monotonic() - self.begin:5.0f}s] {step.label} "
                 f"run {step.run + 1}/{step.runs}: {outcome} ({record['seconds']:.1f}s{note})")
            if not noisy or record["error"] is not None or attempt == self.retries:
                break
            _say(f"    noisy: measuring again ({attempt + 1}/{self.retries})")
        self.records.append(record)
        if profile_to is not None and profile_to.exists():
            self.profiles[f"{step.label}, run {step.run + 1}"] = summarize(profile_to)
        self.save()


async def _stop_on_signal(scope: anyio.CancelScope, stopped: list[int]) -> None:
    """SIGINT/SIGTERM end the run cleanly: the current step's worker is reaped, its database
    dropped, and the report is written from what was measured (even when the shell that
    started us in the background made SIGINT ignored)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            _say(f"received {signal.Signals(signum).name}: stopping after cleaning up")
            stopped.append(signum)
            scope.cancel()
            return


async def _run(args: argparse.Namespace, source_digest: str) -> int:
    sizes = QUICK if args.quick else FULL
    if args.runs is not None:
        sizes = replace(sizes, runs=max(1, args.runs))
    groups = set(args.only.split(","))
    if args.no_peers:
        groups.discard("peers")
    unavailable = {p: why for p in PEERS if "peers" in groups and (why := missing_reason(p))}
    peers = [p for p in PEERS if "peers" in groups and p not in unavailable]
    plan = build_plan(sizes, groups, peers)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.output / f"{stamp}.json", args.output / f"{stamp}.md"
    versions = {name: load_system(name).version() for name in ["soniq", "asyncpg", *peers]}
    described = machine.describe()
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full", "runs": sizes.runs, "groups": sorted(groups),
        "machine": described, "loadavg_start": described["loadavg"],
        "postgres": await server_info(), "server_url": PG_SERVER_URL,
        "git": f"{machine.git_revision(ROOT)}, source snapshot {source_digest}",
        "versions": versions, "peers": {p: versions[p] for p in peers},
        "peers_unavailable": unavailable, "peers_wanted": "peers" in groups,
        "sizes": sizes.__dict__,
    }
    for peer, why in unavailable.items():
        _say(f"peer {peer} skipped: {why}")
    _say(f"soniq benchmarks ({meta['mode']}): {len(plan)} steps, {sizes.runs} run(s) each; "
         f"results -> {json_path}")

    session = _Session(args, plan, meta, json_path, args.output / f"{stamp}-profiles")
    stopped: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signal, tg.cancel_scope, stopped)
        await session.execute()
        tg.cancel_scope.cancel()

    meta["loadavg_end"] = machine.describe()["loadavg"]
    meta["interrupted"] = bool(stopped)
    session.save()
    text = markdown(meta, session.records, session.profiles)
    md_path.write_text(text)
    print(text)
    _say(f"wrote {json_path} and {md_path}")
    if stopped:
        return 130
    # A Soniq step that failed (not a slow one: no thresholds) fails the run, so the suite cannot
    # rot unnoticed in CI; a peer that fails is reported in the table only.
    broken = [r for r in session.records if r["error"] and r["system"].startswith("soniq")]
    if broken:
        _say(f"{len(broken)} Soniq step(s) failed; see the table")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    digest = source.freeze(ROOT)  # before anything imports soniq
    return anyio.run(_run, args, digest)
