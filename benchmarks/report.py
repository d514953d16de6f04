"""Turn step records into medians, check them against the targets, and write Markdown.

A *record* is one step's outcome (a JSON object: scenario, system, backend, loop, params, run,
metrics, error, others_pct). A *group* is every run of one measurement; its figures are the medians
of its successful runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks.machine import NOISY_PCT
from benchmarks.stats import median

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Group", "group_records", "markdown", "nearest", "times"]

#: Targets from the brief (DESIGN.md §4 and the issue); checked on this run's medians.
PROCESS_TARGET = 20_000.0  # jobs/s, PostgreSQL, concurrency 100
ENQUEUE_RATIO_TARGET = 0.90  # of bare asyncpg, one job per call
BULK_TARGET = 150_000.0  # jobs/s
LATENCY_P50_TARGET = 2.5  # ms
LATENCY_P99_TARGET = 6.0  # ms
TRIO_RATIO_TARGET = 0.50  # of asyncio, process at concurrency 100
SQLITE_PROCESS_TARGET = 5_000.0  # jobs/s
MEMORY_GROWTH_TARGET = 10.0  # % over 100 000 jobs
LIMITS_RATIO_TARGET = 0.70  # limited (1 per key, 1,000 keys) of unlimited, process at c=100
NEIGHBOUR_RATIO_TARGET = 0.95  # unlimited queue beside a paused, limited backlog, of plain
RATE_TOLERANCE_PCT = 5.0  # a queue rate limit's achieved start rate, ± % of the set rate
WEBHOOKS_RATIO_TARGET = 0.90  # of plain Soniq, process at concurrency 100, receiver never answers


def noisy(record: dict[str, Any]) -> bool:
    """Other work on the machine used more than NOISY_PCT of a core during this step."""
    return float(record.get("others_pct", 0.0)) > NOISY_PCT


@dataclass
class Group:
    scenario: str
    system: str
    backend: str
    loop: str
    params: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["error"] is None]

    @property
    def errors(self) -> list[str]:
        return [r["error"] for r in self.records if r["error"] is not None]

    @property
    def busy_runs(self) -> int:
        return sum(1 for r in self.records if noisy(r))

    def m(self, metric: str) -> float | None:
        """Median of ``metric`` over successful runs (None if no run succeeded)."""
        values = [r["metrics"][metric] for r in self.ok if isinstance(r["metrics"].get(metric),
                                                                        int | float)]
        return median(values) if values else None

    def medians(self) -> dict[str, float]:
        names = {k for r in self.ok for k, v in r["metrics"].items() if isinstance(v, int | float)}
        return {k: v for k in sorted(names) if (v := self.m(k)) is not None}


def group_records(records: Sequence[dict[str, Any]]) -> list[Group]:
    groups: dict[tuple[Any, ...], Group] = {}
    for r in records:
        key = (r["scenario"], r["system"], r["backend"], r["loop"], tuple(r["params"].items()))
        if key not in groups:
            groups[key] = Group(r["scenario"], r["system"], r["backend"], r["loop"], r["params"])
        groups[key].records.append(r)
    return list(groups.values())


class _Index:
    def __init__(self, groups: list[Group]) -> None:
        self.groups = groups

    def find(self, scenario: str, system: str = "soniq", *, backend: str = "postgres",
             loop: str = "asyncio", **params: Any) -> Group | None:
        for g in self.groups:
            if (g.scenario, g.system, g.backend, g.loop) == (scenario, system, backend, loop) and \
                    all(g.params.get(k) == v for k, v in params.items()):
                return g
        return None

    def all(self, scenario: str, system: str = "soniq", *, backend: str = "postgres",
            loop: str = "asyncio") -> list[Group]:
        return [g for g in self.groups
                if (g.scenario, g.system, g.backend, g.loop) == (scenario, system, backend, loop)]


# -- formatting -------------------------------------------------------------------------------------
def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} jobs/s"


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("✅ met" if ok else "❌ missed")


def _why(group: Group | None) -> str:
    if group is None:
        return "not measured"
    if group.errors and not group.ok:
        return f"failed: {group.errors[0][:120]}"
    return ""


def _split(g: Group) -> str:
    """Where a latency went, from the job row's timestamps (Soniq only)."""
    to_claim, to_start = g.m("to_claim_p50_ms"), g.m("claim_to_start_p50_ms")
    if to_claim is None or to_start is None:
        return ""
    return f"; p50 split: enqueue → claim begins {ms(to_claim)}, claim → job runs {ms(to_start)}"


def _cpu(g: Group) -> str:
    worker, box = g.m("worker_cpu_pct"), g.m("machine_cpu_pct")
    if worker is None or box is None:
        return ""
    return f" (worker used {worker:.0f}% of a core; all CPUs {box:.0f}% busy)"


def _params(params: dict[str, Any]) -> str:
    names = {"n": "N", "c": "concurrency", "chunk": "per call", "samples": "samples",
             "seconds": "s"}
    return ", ".join(f"{names.get(k, k)}={v:,}" if isinstance(v, int) else f"{names.get(k, k)}={v}"
                     for k, v in params.items())


# -- the targets table -------------------------------------------------------------------------------
def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _pct(ratio: float | None) -> str:
    return "?" if ratio is None else f"{ratio * 100:.0f}%"


def times(ratio: float | None) -> str:
    """A ratio as a multiple: ``1.83×`` (``?`` when unknown)."""
    return "?" if ratio is None else f"{ratio:.2f}×"


def nearest(groups: Sequence[Group], n: int) -> Group | None:
    """The group whose ``n`` is closest to ``n`` (the smaller on a tie), among those that ran."""
    sized = [g for g in groups if g.ok and isinstance(g.params.get("n"), int)]
    return min(sized, key=lambda g: (abs(g.params["n"] - n), g.params["n"]), default=None)


def _of_floor(g: Group, floor: Group | None, what: str) -> str:
    """``; N% of <what> (rate, bare asyncpg, c=...)`` for a burn-down, or nothing."""
    floor_rate = floor.m("jobs_per_s") if floor else None
    if floor is None or floor_rate is None:
        return ""
    at_n = "" if floor.params["n"] == g.params.get("n") else f", N={floor.params['n']:,}"
    return (f"; {_pct(_ratio(g.m('jobs_per_s'), floor_rate))} of {what} ({rate(floor_rate)}, "
            f"bare asyncpg, c={floor.params['c']} connections{at_n})")


def _target_rows(ix: _Index) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, g: Group | None, target: str, measured: str,
            met: bool | None = None) -> None:
        """``measured``/``met`` may be computed from a failed group: only shown if it ran."""
        if g is None or not g.ok:
            rows.append((name, _why(g) or "not measured", target, "—"))
            return
        busy = f" ({g.busy_runs} noisy run(s))" if g.busy_runs else ""
        rows.append((name, measured + busy, target, _met(met)))

    for g in ix.all("enqueue"):
        base = ix.find("enqueue", "asyncpg", n=g.params["n"])
        base_rate = base.m("jobs_per_s") if base else None
        ratio = _ratio(g.m("jobs_per_s"), base_rate)
        row(f"1 enqueue, 1 job/call ({_params(g.params)})", g, "≥ 90% of bare asyncpg",
            f"{rate(g.m('jobs_per_s'))}, call p50 {ms(g.m('call_p50_ms'))}; "
            f"**{_pct(ratio)}** of bare asyncpg ({rate(base_rate)})",
            None if ratio is None else ratio >= ENQUEUE_RATIO_TARGET)
    for g in ix.all("bulk"):
        base = ix.find("bulk", "asyncpg", n=g.params["n"], chunk=g.params["chunk"])
        base_rate = base.m("jobs_per_s") if base else None
        row(f"2 bulk, enqueue_many ({_params(g.params)})", g, "≥ 150,000 jobs/s",
            f"**{rate(g.m('jobs_per_s'))}** (bare asyncpg COPY: {rate(base_rate)})",
            (g.m("jobs_per_s") or 0) >= BULK_TARGET)
    for g in ix.all("process"):
        c100 = g.params["c"] == 100
        of_floor = _of_floor(g, ix.find("process", "asyncpg", n=g.params["n"]),
                             "the claim+finish floor")
        row(f"3 process, burn-down ({_params(g.params)})", g,
            "≥ 20,000 jobs/s" if c100 else "(none)",
            f"**{rate(g.m('jobs_per_s'))}**{_cpu(g)}{of_floor}",
            (g.m("jobs_per_s") or 0) >= PROCESS_TARGET if c100 else None)
    for g in ix.all("latency"):
        floor = ix.find("latency", "asyncpg+notify", samples=g.params["samples"])
        floor_p50 = floor.m("p50_ms") if floor else None
        of_floor = ("" if floor is None or floor_p50 is None else
                    f"; p50 = **{times(_ratio(g.m('p50_ms'), floor_p50))}** the wake-up floor's "
                    f"(p50 {ms(floor_p50)}, p99 {ms(floor.m('p99_ms'))}: bare asyncpg "
                    "INSERT + pg_notify, LISTEN + Soniq's claim)")
        row(f"4 latency, enqueue→start ({_params(g.params)})", g, "p50 ≤ 2.5 ms, p99 ≤ 6 ms",
            f"p50 **{ms(g.m('p50_ms'))}**, p99 **{ms(g.m('p99_ms'))}**, "
            f"max {ms(g.m('max_ms'))}, missed {g.m('missed') or 0:.0f}{_split(g)}{of_floor}",
            (g.m("p50_ms") or 1e9) <= LATENCY_P50_TARGET
            and (g.m("p99_ms") or 1e9) <= LATENCY_P99_TARGET)
    for g in ix.all("mixed"):
        row(f"5 mixed, 2 producers × enqueue_many(20) + worker c=100 ({_params(g.params)})", g,
            "(none)",
            f"processed **{rate(g.m('processed_per_s'))}** (last third of the window: "
            f"{rate(g.m('processed_last_third_per_s'))}), enqueued "
            f"{rate(g.m('enqueued_per_s'))}; queue depth p50 "
            f"{g.m('depth_p50') or 0:,.0f}, max {g.m('depth_max') or 0:,.0f}, "
            f"at end {g.m('depth_end') or 0:,.0f}")
    for g in ix.all("process", loop="trio"):
        asyncio_group = ix.find("process", n=g.params["n"], c=g.params["c"])
        ratio = _ratio(g.m("jobs_per_s"), asyncio_group.m("jobs_per_s") if asyncio_group else None)
        c100 = g.params["c"] == 100
        row(f"6 trio, process ({_params(g.params)})", g, "≥ 50% of asyncio" if c100 else "(none)",
            f"{rate(g.m('jobs_per_s'))} = **{_pct(ratio)}** of asyncio{_cpu(g)}",
            (None if ratio is None else ratio >= TRIO_RATIO_TARGET) if c100 else None)
    for g in ix.all("latency", loop="trio"):
        asyncio_group = ix.find("latency", samples=g.params["samples"])
        row(f"6 trio, latency ({_params(g.params)})", g, "(none)",
            f"p50 {ms(g.m('p50_ms'))}, p99 {ms(g.m('p99_ms'))} (asyncio: p50 "
            f"{ms(asyncio_group.m('p50_ms') if asyncio_group else None)}){_split(g)}")
    for scenario in ("enqueue", "bulk"):
        for g in ix.all(scenario, backend="sqlite"):
            row(f"7 SQLite {scenario} ({_params(g.params)})", g, "(none)",
                rate(g.m("jobs_per_s")))
    for g in ix.all("process", backend="sqlite"):
        c100 = g.params["c"] == 100
        row(f"7 SQLite process ({_params(g.params)})", g, "≥ 5,000 jobs/s" if c100 else "(none)",
            f"**{rate(g.m('jobs_per_s'))}**{_cpu(g)}",
            (g.m("jobs_per_s") or 0) >= SQLITE_PROCESS_TARGET if c100 else None)
    for g in ix.all("memory"):
        row(f"8 worker memory ({_params(g.params)})", g, "growth ≤ 10%",
            f"RSS {g.m('rss_start_mib') or 0:.1f} → {g.m('rss_end_mib') or 0:.1f} MiB: "
            f"**{g.m('growth_pct') or 0:+.1f}%** (after the first round "
            f"{g.m('rss_after_first_round_mib') or 0:.1f} MiB, then "
            f"{g.m('growth_after_first_round_pct') or 0:+.1f}%)",
            (g.m("growth_pct") or 1e9) <= MEMORY_GROWTH_TARGET)
    for system, label, target, left in _FEATURE_ROWS:
        for g in ix.all("features", system):
            plain = ix.find("features", n=g.params["n"], c=g.params["c"])
            base_rate = plain.m("jobs_per_s") if plain else None
            ratio = _ratio(g.m("jobs_per_s"), base_rate)
            count = g.m(left[0])
            evidence = ("" if count is None else
                        "; " + left[1].format(count=count, events=2 * g.params["n"]))
            startup, base_startup = g.m("startup_seconds"), plain.m("startup_seconds") if plain else None
            if startup is not None and base_startup is not None:
                evidence += (f"; worker start-up {startup:.2f} s (plain {base_startup:.2f} s), "
                             "outside the rate")
            row(f"10 features, {label} ({_params(g.params)})", g, target,
                f"{rate(g.m('jobs_per_s'))} = **{_pct(ratio)}** of plain Soniq "
                f"({rate(base_rate)}){_cpu(g)}{evidence}",
                (None if ratio is None else ratio >= WEBHOOKS_RATIO_TARGET)
                if system == "soniq+webhooks" else None)
    for system, label, target, minimum in _LIMIT_ROWS:
        for g in ix.all("limits", system):
            plain = ix.find("limits", n=g.params["n"], c=g.params["c"])
            ratio = _ratio(g.m("jobs_per_s"), plain.m("jobs_per_s") if plain else None)
            held = "" if g.m("held_queued") is None else (
                f"; held queue after the step: {g.m('held_queued') or 0:,.0f} queued, "
                f"{g.m('held_started') or 0:,.0f} ever started")
            row(f"12 limits, {label} ({_params(g.params)})", g, target,
                f"{rate(g.m('jobs_per_s'))} = **{_pct(ratio)}** of unlimited "
                f"({rate(plain.m('jobs_per_s') if plain else None)}){_cpu(g)}{held}",
                None if ratio is None else ratio >= minimum)
    for g in ix.all("limits", "soniq+queue-rate"):
        pct = g.m("achieved_pct")
        row(f"12 limits, queue rate limit at 50% of unlimited, {g.params['workers']} worker "
            f"processes ({_params(g.params)})", g, "within ±5% of the set rate",
            f"set {g.m('rate_set') or 0:,.0f}/s (half of {rate(g.m('unlimited_jobs_per_s'))}); "
            f"achieved {g.m('jobs_per_s') or 0:,.0f} starts/s = **{pct or 0:.1f}%** of it; "
            f"second half of the window {g.m('second_half_per_s') or 0:,.0f}/s, seconds 2.. "
            f"{g.m('per_second_min') or 0:,.0f}–{g.m('per_second_max') or 0:,.0f}, first second "
            f"{g.m('first_second_starts') or 0:,.0f} (burst); {g.m('queued_left') or 0:,.0f} of "
            f"{g.m('backlog') or 0:,.0f} still queued at the end{_cpu(g)}",
            None if pct is None else abs(pct - 100.0) <= RATE_TOLERANCE_PCT)
    for g in ix.all("embedded"):
        own = ix.find("process", n=g.params["n"], c=g.params["c"])
        beside = "" if own is None or own.m("jobs_per_s") is None else \
            f"; worker in its own process (3): {rate(own.m('jobs_per_s'))}"
        for peer in ix.groups:
            if peer.scenario == "embedded" and not peer.system.startswith("soniq") and \
                    peer.params == g.params and peer.m("jobs_per_s"):
                beside += (f"; {peer.system} embedded the same way: {rate(peer.m('jobs_per_s'))}"
                           f" (Soniq {times(_ratio(g.m('jobs_per_s'), peer.m('jobs_per_s')))})")
        row(f"11 embedded, worker in the producer's process ({_params(g.params)})", g, "(none)",
            f"**{rate(g.m('jobs_per_s'))}**{_cpu(g)}"
            f"{_of_floor(g, nearest(ix.all('process', 'asyncpg'), g.params['n']), 'the claim+finish floor')}"
            f"{beside}")
    from benchmarks.report_workflows import workflow_rows  # it imports this module's helpers
    for args in workflow_rows(ix):
        row(*args)
    return rows


#: The ``limits`` burn-down rows: system, label, target, least ratio to unlimited.
_LIMIT_ROWS = [
    ("soniq+limit-rr", "concurrency_limit=1 over 1,000 keys, keys round-robin",
     "≥ 70% of unlimited", LIMITS_RATIO_TARGET),
    ("soniq+limit-grouped", "concurrency_limit=1 over 1,000 keys, keys grouped (100 in a row)",
     "≥ 70% of unlimited", LIMITS_RATIO_TARGET),
    ("soniq+held-neighbour", ("unlimited queue beside a paused queue (concurrency limit 5, "
     "100,000 jobs at priority 0)"), "≥ 95% of unlimited", NEIGHBOUR_RATIO_TARGET),
]
_WEBHOOK_EVENTS = ("{count:,.0f} job events recorded for {events:,} (delivery rows + event log; "
                   "a heartbeat records a running job's job.started again, delivered once)")
#: The ``features`` rows: system, label, target, (count metric, how to show it). Only the
#: webhooks row has a target (the issue's); logs and encryption report their cost.
_FEATURE_ROWS = [
    ("soniq+webhooks", "webhooks on, receiver never answers", "≥ 90% of no webhooks",
     ("webhook_events", _WEBHOOK_EVENTS)),
    ("soniq+logs", "job logs on, 1 INFO line a job", "(cost, reported)",
     ("log_records", "{count:,.0f} log records stored")),
    ("soniq+encrypt", "encryption on, encrypt=True jobs", "(cost, reported)",
     ("encrypted_jobs", "{count:,.0f} jobs stored encrypted")),
]


# -- the peers table ----------------------------------------------------------------------------------
_PEER_ROWS: list[tuple[str, str, str, bool, dict[str, Any]]] = [
    # label, scenario, metric, higher is better, extra params to match
    ("enqueue, 1 job/call", "enqueue", "jobs_per_s", True, {}),
    ("bulk, 1,000 jobs/call", "bulk", "jobs_per_s", True, {"chunk": 1000}),
    ("process, concurrency 10", "process", "jobs_per_s", True, {"c": 10}),
    ("process, concurrency 100", "process", "jobs_per_s", True, {"c": 100}),
    ("latency p50", "latency", "p50_ms", False, {}),
    ("latency p99", "latency", "p99_ms", False, {}),
    ("embedded, concurrency 10", "embedded", "jobs_per_s", True, {}),
]


def _fmt(metric: str, value: float | None) -> str:
    return ms(value) if metric.endswith("_ms") else rate(value)


def _peer_table(ix: _Index, peers: dict[str, str], unavailable: dict[str, str]) -> list[str]:
    names = list(peers) + [p for p in unavailable if p not in peers]
    header = (["measurement", "soniq"] + [f"{p} {peers.get(p, '')}".strip() for p in names]
              + [f"soniq vs {p}" for p in names])
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for label, scenario, metric, higher, extra in _PEER_ROWS:
        peer_groups = {p: next((g for g in ix.all(scenario, p)
                                if all(g.params.get(k) == v for k, v in extra.items())), None)
                       for p in names}
        anchor = next((g for g in peer_groups.values() if g is not None), None)
        params = {**extra, **(anchor.params if anchor else {})}
        soniq = ix.find(scenario, **params) if anchor else None
        soniq_value = soniq.m(metric) if soniq else None
        cells = [f"{label} ({_params(params)})" if anchor else label, _fmt(metric, soniq_value)]
        ratios = []
        for p in names:
            g = peer_groups[p]
            if p in unavailable:
                cells.append("n/a¹")
                ratios.append("n/a")
                continue
            value = g.m(metric) if g else None
            cells.append(_fmt(metric, value) if value is not None
                         else (f"failed² ({_why(g)[:60]})" if g else "—"))
            if value and soniq_value:
                ratio = soniq_value / value if higher else value / soniq_value
                ratios.append(f"{ratio:.2f}×")
            else:
                ratios.append("—")
        lines.append("| " + " | ".join(cells + ratios) + " |")
    lines.append("")
    lines.append("Ratios are Soniq's advantage: > 1× means Soniq is better (faster, or lower "
                 "latency). Peer settings: PgQueuer `qm.run(batch_size=min(10, c/2), "
                 "max_concurrent_tasks=c)`, embedded `batch_size=10, max_concurrent_tasks=20` (it refuses a cap below twice the batch); Procrastinate `run_worker_async(concurrency=c)`.")
    for p, reason in unavailable.items():
        lines.append(f"¹ {p}: {reason}")
    if any(g.errors for p in names for g in ix.groups if g.system == p):
        lines.append("² a peer step failed; the error is in the full list below and in the JSON.")
    return lines


# -- everything -----------------------------------------------------------------------------------------
def _headline(g: Group) -> str:
    if g.scenario == "latency":
        return f"p50 {ms(g.m('p50_ms'))} / p99 {ms(g.m('p99_ms'))}"
    if g.scenario == "mixed":
        return f"{rate(g.m('processed_per_s'))} processed"
    if g.scenario == "memory":
        return f"{g.m('growth_pct') or 0:+.1f}% RSS"
    return rate(g.m("jobs_per_s"))


def _per_run(g: Group) -> str:
    def one(r: dict[str, Any]) -> str:
        if r["error"] is not None:
            return "error"
        m = r["metrics"]
        if g.scenario == "latency":
            text = f"{m['p50_ms']:.2f}/{m['p99_ms']:.2f}"
        elif g.scenario == "mixed":
            text = f"{m['processed_per_s']:,.0f}"
        elif g.scenario == "memory":
            text = f"{m['growth_pct']:+.1f}%"
        else:
            text = f"{m['jobs_per_s']:,.0f}"
        return text + ("*" if noisy(r) else "")
    return ", ".join(one(r) for r in g.records)


def markdown(meta: dict[str, Any], records: Sequence[dict[str, Any]],
             profiles: dict[str, str] | None = None) -> str:
    ix = _Index(group_records(records))
    machine, server = meta["machine"], meta["postgres"]
    runs = f"median of {meta['runs']} run{'s' if meta['runs'] != 1 else ''}"
    busy_steps = sum(1 for r in records if noisy(r))
    retried = sum(1 for r in records if r.get("attempt", 1) > 1)
    others = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if k != "soniq")
    lines = [
        f"# Soniq benchmarks, {meta['started']} ({meta['mode']}, {runs})",
        "",
        (f"- Machine: {machine['nproc']} × {machine['cpu']}, {machine['memory_gib']} GiB, "
         f"Linux {machine['kernel']}, Python {machine['python']}; load average at start "
         f"{meta['loadavg_start']}, at end {meta['loadavg_end']}"),
        (f"- PostgreSQL: {server['version'].split(' on ')[0]} on 127.0.0.1 (shared_buffers="
         f"{server['shared_buffers']}, synchronous_commit={server['synchronous_commit']}, "
         f"fsync={server['fsync']}); a fresh database per step"),
        f"- Versions: soniq {meta['versions'].get('soniq')} (git {meta['git']}), {others}",
        (f"- Duration: {meta['seconds'] / 60:.1f} min. The machine is shared: {retried} step(s) "
         f"were measured again because other work used more than {NOISY_PCT:.0f}% of a core "
         f"during them; {busy_steps} of {len(records)} kept such noise (marked * below)"),
        *(["- **Interrupted**: these tables hold only the steps measured before the stop"]
          if meta.get("interrupted") else []),
        "",
        "## Soniq against its targets",
        "",
        "| measurement | median | target | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _target_rows(ix)]
    if meta.get("peers_wanted"):
        lines += ["", "## Soniq against its peers (same run, same machine, same method)", ""]
        lines += _peer_table(ix, meta["peers"], meta["peers_unavailable"])
    lines += ["", "## Every measurement", "",
              "| measurement | median | runs (* = noisy: other work > 20% of a core) | errors |", "|---|---|---|---|"]
    for g in ix.groups:
        where = g.backend if g.loop == "asyncio" else f"{g.backend}/{g.loop}"
        errors = "; ".join(e[:100] for e in g.errors) or ""
        lines.append(f"| {g.scenario} {g.system} [{where}] {_params(g.params)} | {_headline(g)} "
                     f"| {_per_run(g)} | {errors} |")
    for title, text in (profiles or {}).items():
        lines += ["", f"## Profile: {title}", "", text]
    return "\n".join(lines) + "\n"
