"""``python -m benchmarks.compare OLD_REV NEW_REV --pairs N --only GROUPS [--quick]``.

Is NEW faster than OLD, beyond this shared machine's noise? Both revisions are checked out as
detached git worktrees (in a temporary directory, removed at the end) and measured by their own
``python -m benchmarks --only GROUPS --runs 1 --no-peers`` (each run snapshots the ``src/soniq``
of the tree it runs from, so it measures that revision). First ``--aa-pairs`` A/A pairs (OLD
against OLD: what "no change" looks like right now), then ``--pairs`` A/B pairs, the order
alternating inside pairs (old-new, new-old, ...) so drift on the machine hits both alike.

For every Soniq measurement: OLD and NEW medians, the difference, the A/A spread (the difference
of the two A/A sides' medians, and the range of the A/A runs), and a verdict: "within noise"
unless |difference| > max(3%, A/A spread). Process rows also get the worker's CPU per job,
steadier than throughput when other work competes for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.machine import NOISY_PCT
from benchmarks.report import _params, group_records, noisy
from benchmarks.stats import median

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["Row", "collect", "compare_row", "main", "markdown"]

ROOT = Path(__file__).resolve().parent.parent
#: A difference below this (in %) is never called a change, however quiet the A/A pairs were.
MIN_CHANGE_PCT = 3.0
CPU_METRIC = "cpu_us_per_job"
#: scenario -> (metric, label, higher is better, digits)
METRICS: dict[str, list[tuple[str, str, bool, int]]] = {
    "enqueue": [("jobs_per_s", "jobs/s", True, 0)],
    "bulk": [("jobs_per_s", "jobs/s", True, 0)],
    "process": [("jobs_per_s", "jobs/s", True, 0), (CPU_METRIC, "worker CPU µs/job", False, 1)],
    "features": [("jobs_per_s", "jobs/s", True, 0), (CPU_METRIC, "worker CPU µs/job", False, 1)],
    "limits": [("jobs_per_s", "jobs/s", True, 0), (CPU_METRIC, "worker CPU µs/job", False, 1)],
    "embedded": [("jobs_per_s", "jobs/s", True, 0), (CPU_METRIC, "process CPU µs/job", False, 1)],
    "latency": [("p50_ms", "p50 ms", False, 2), ("p99_ms", "p99 ms", False, 2)],
    "workflows": [("jobs_per_s", "jobs/s", True, 0), ("p50_ms", "step overhead p50 ms", False, 2)],
    "mixed": [("processed_per_s", "processed/s", True, 0)],
    "memory": [("growth_pct", "RSS growth %", False, 1)],
}
OLD, NEW, AA1, AA2 = "old", "new", "aa1", "aa2"


def _value(record: dict[str, Any], metric: str) -> float | None:
    m = record["metrics"]
    if metric == CPU_METRIC:  # % of one core x seconds = CPU seconds, over the jobs run
        if "worker_cpu_pct" not in m or not record["params"].get("n"):
            return None
        return float(m["worker_cpu_pct"]) / 100 * float(m["seconds"]) / record["params"]["n"] * 1e6
    value = m.get(metric)
    return float(value) if isinstance(value, int | float) else None


#: (scenario, measurement label, metric label, higher is better, digits)
Key = tuple[str, str, str, bool, int]


def collect(runs: Iterable[tuple[str, Sequence[dict[str, Any]]]]) -> dict[Key, dict[str, list[float]]]:
    """Values per measurement and side, from ``(side, records of one run)`` pairs. Soniq's rows
    only (the ``features`` variants too); failed steps are left out."""
    out: dict[Key, dict[str, list[float]]] = {}
    for side, records in runs:
        for g in group_records([r for r in records if r["system"].startswith("soniq")]):
            where = g.backend if g.loop == "asyncio" else f"{g.backend}/{g.loop}"
            name = f"{g.system} [{where}] {_params(g.params)}"
            for metric, label, higher, digits in METRICS.get(g.scenario, []):
                values = [v for r in g.ok if (v := _value(r, metric)) is not None]
                if values:
                    key = (g.scenario, name, label, higher, digits)
                    out.setdefault(key, {}).setdefault(side, []).append(median(values))
    return out


def _pct(new: float, old: float) -> float:
    return (new - old) / old * 100 if old else 0.0


@dataclass(frozen=True)
class Row:
    old: float
    new: float
    diff_pct: float
    aa_pct: float | None  # |difference| of the A/A sides' medians, in % (None: no A/A pairs)
    aa_range: tuple[float, float] | None
    verdict: str


def compare_row(sides: dict[str, list[float]], higher: bool) -> Row | None:
    """The statistics of one measurement; None when OLD or NEW has no value."""
    if not sides.get(OLD) or not sides.get(NEW):
        return None
    old, new = median(sides[OLD]), median(sides[NEW])
    diff = _pct(new, old)
    aa_pct = aa_range = None
    if sides.get(AA1) and sides.get(AA2):
        aa_pct = abs(_pct(median(sides[AA2]), median(sides[AA1])))
        aa_all = sides[AA1] + sides[AA2]
        aa_range = (min(aa_all), max(aa_all))
    if abs(diff) <= max(MIN_CHANGE_PCT, aa_pct or 0.0):
        verdict = "within noise"
    else:
        verdict = "faster" if (diff > 0) == higher else "slower"
    return Row(old, new, diff, aa_pct, aa_range, verdict)


def _num(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def _span(values: Sequence[float], digits: int) -> str:
    return f"{_num(min(values), digits)}–{_num(max(values), digits)}"


_HEADER = ("| measurement | OLD median (range) | NEW median (range) | diff | A/A diff | A/A range "
           "| verdict |\n|---|---:|---:|---:|---:|---:|---|")


def markdown(data: dict[Key, dict[str, list[float]]], title: str, note: str = "") -> str:
    lines = [f"# {title}", "",
             (f"Verdict: within noise unless |diff| > max({MIN_CHANGE_PCT:.0f}%, A/A diff). "
              f"Ranges are min–max over runs.{note}")]
    scenario = None
    for key in sorted(data, key=lambda k: (list(METRICS).index(k[0]), k[1], k[2])):
        sides, digits = data[key], key[4]
        row = compare_row(sides, key[3])
        if row is None:
            continue
        if key[0] != scenario:
            scenario = key[0]
            lines += ["", f"## {scenario}", "", _HEADER]
        aa = "—" if row.aa_pct is None else f"±{row.aa_pct:.1f}%"
        aa_range = "—" if row.aa_range is None else _span(row.aa_range, digits)
        lines.append(f"| {key[1]}, {key[2]} | {_num(row.old, digits)} ({_span(sides[OLD], digits)}) "
                     f"| {_num(row.new, digits)} ({_span(sides[NEW], digits)}) "
                     f"| {row.diff_pct:+.1f}% | {aa} | {aa_range} | {row.verdict} |")
    return "\n".join(lines) + "\n"


# -- running ----------------------------------------------------------------------------------------
def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def _bench(tree: Path, out: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One ``python -m benchmarks`` run from ``tree``; its records."""
    cmd = [sys.executable, "-m", "benchmarks", "--only", args.only, "--runs", "1", "--no-peers",
           "--output", str(out), *(["--quick"] if args.quick else [])]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # import the tree's code
    rc = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, check=False).returncode
    found = sorted(out.glob("*.json"))
    if not found:
        raise RuntimeError(f"benchmark run in {tree} wrote no results (exit {rc})")
    data = json.loads(found[-1].read_text())
    expected = _git("-C", str(tree), "rev-parse", "--short", "HEAD")
    if not str(data["meta"].get("git", "")).startswith(expected):
        raise RuntimeError(f"run in {tree} measured {data['meta'].get('git')}, not {expected}")
    print(f"    {out.name}: exit {rc}, git {data['meta']['git']}", file=sys.stderr, flush=True)
    records: list[dict[str, Any]] = data["records"]
    return records


def _schedule(pairs: int, aa_pairs: int) -> list[str]:
    """The order of the runs: A/A pairs, then A/B pairs alternating old-new / new-old."""
    order: list[str] = []
    for i in range(aa_pairs):
        order += [AA1, AA2] if i % 2 == 0 else [AA2, AA1]
    for i in range(pairs):
        order += [OLD, NEW] if i % 2 == 0 else [NEW, OLD]
    return order


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", metavar="OLD_REV")
    parser.add_argument("new", metavar="NEW_REV")
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs (default 3)")
    parser.add_argument("--aa-pairs", type=int, default=None,
                        help="A/A pairs (OLD against OLD) first (default: --pairs)")
    parser.add_argument("--only", default="process,latency",
                        help="benchmark groups, comma-separated (default: process,latency)")
    parser.add_argument("--quick", action="store_true", help="the bench's --quick sizes")
    parser.add_argument("--output", action="store_true",
                        help="also write the tables to benchmarks/results/compare-<timestamp>.md")
    args = parser.parse_args(argv)
    args.aa_pairs = args.pairs if args.aa_pairs is None else args.aa_pairs
    if args.pairs < 1 or args.aa_pairs < 0:
        parser.error("--pairs must be >= 1 and --aa-pairs >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    shas = {OLD: _git("rev-parse", "--verify", f"{args.old}^{{commit}}"),
            NEW: _git("rev-parse", "--verify", f"{args.new}^{{commit}}")}
    tmp = Path(tempfile.mkdtemp(prefix="soniq_bench_compare_"))
    trees = {side: tmp / side for side in (OLD, NEW)}
    results: list[tuple[str, list[dict[str, Any]]]] = []
    try:
        for side, tree in trees.items():
            _git("worktree", "add", "--detach", str(tree), shas[side])
        order = _schedule(args.pairs, args.aa_pairs)
        for i, side in enumerate(order, 1):
            print(f"[compare {i}/{len(order)}] {side}", file=sys.stderr, flush=True)
            tree = trees[NEW if side == NEW else OLD]
            results.append((side, _bench(tree, tmp / "runs" / f"{i:02d}-{side}", args)))
    finally:
        for tree in trees.values():
            if tree.exists():
                _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
    title = (f"Compare {args.old} ({shas[OLD][:9]}) → {args.new} ({shas[NEW][:9]}): "
             f"{args.aa_pairs} A/A + {args.pairs} A/B pairs, --only {args.only}"
             f"{', quick' if args.quick else ''}")
    busy = sum(any(noisy(r) for r in records) for _side, records in results)
    note = (f" **{busy} of {len(results)} runs** had a step where other work used more than "
            f"{NOISY_PCT:.0f}% of a core (see the bench's own tables); read their verdicts with care."
            if busy else "")
    text = markdown(collect(results), title, note)
    print(text)
    if args.output:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = ROOT / "benchmarks" / "results" / f"compare-{stamp}.md"
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
