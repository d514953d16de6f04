"""The ``workflows`` group's rows of the targets table (issue #21), for :mod:`benchmarks.report`:
each shape as a ratio to what it is measured against in the same run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.report import _params, _pct, _ratio, ms, rate, times

if TYPE_CHECKING:
    from benchmarks.report import Group

__all__ = ["CHAIN_LATENCY_TARGET", "FAN_IN_TARGET", "INSERT_RATIO_TARGET", "workflow_rows"]

FAN_IN_TARGET = 1.3  # × the time of the same jobs without the fan-in
CHAIN_LATENCY_TARGET = 2.0  # per-step overhead p50, × the latency scenario's p50
INSERT_RATIO_TARGET = 0.50  # steps/s of wf.enqueue(), of enqueue_many's jobs/s

#: (name, group, target, measured, met) -- the arguments of report's ``row``.
Row = tuple[str, "Group | None", str, str, "bool | None"]


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f} s"


def workflow_rows(ix: Any) -> list[Row]:
    """``ix``: report's index of the run's groups."""
    rows: list[Row] = []
    for g in ix.all("workflows"):
        shape, p = g.params.get("shape"), g.params
        if shape == "fan-in":
            plain = ix.find("workflows", shape="independent", n=p["n"], c=p["c"])
            base = plain.m("seconds") if plain else None
            ratio = _ratio(g.m("seconds"), base)
            name = (f"13 workflows, {p['n']:,}-wide fan-out + 1 fan-in job, burn-down "
                    f"({_params(p)})")
            measured = (
                f"{_seconds(g.m('seconds'))} = **{times(ratio)}** the {p['n']:,} independent "
                f"jobs' {_seconds(base)} ({rate(g.m('jobs_per_s'))} vs "
                f"{rate(plain.m('jobs_per_s') if plain else None)}); last dependency's "
                f"finished_at (its finish statement's start) → fan-in job's started_at "
                f"{ms(g.m('release_to_start_ms'))}; worker used "
                f"{g.m('worker_cpu_pct') or 0:.0f}% of a core")
            rows.append((name, g, "≤ 1.3× the same jobs without the fan-in", measured,
                         None if ratio is None else ratio <= FAN_IN_TARGET))
        elif shape == "chain":
            latency = ix.find("latency")
            base = latency.m("p50_ms") if latency else None
            ratio = _ratio(g.m("p50_ms"), base)
            of = ("" if ratio is None else
                  f" = **{times(ratio)}** the latency scenario's p50 ({ms(base)})")
            name = (f"13 workflows, chain of {p['n']:,} steps: per-step overhead, previous "
                    f"finished_at → next started_at ({_params(p)})")
            measured = (
                f"p50 **{ms(g.m('p50_ms'))}**, p99 {ms(g.m('p99_ms'))}, max "
                f"{ms(g.m('max_ms'))}{of}; whole chain {_seconds(g.m('chain_seconds'))} "
                f"({rate(g.m('jobs_per_s'))}), a step runs {ms(g.m('step_run_p50_ms'))} (p50)")
            rows.append((name, g, "p50 ≤ 2× the latency p50", measured,
                         None if ratio is None else ratio <= CHAIN_LATENCY_TARGET))
        elif shape in ("workflow", "workflow+fan-in"):
            many = ix.find("workflows", shape="enqueue_many", n=p["n"])
            base = many.m("jobs_per_s") if many else None
            ratio = _ratio(g.m("jobs_per_s"), base)
            what = ("independent steps" if shape == "workflow" else
                    "independent steps + 1 after all of them")
            name = f"13 workflows, insert: `await wf.enqueue()` of {p['n']:,} {what} ({_params(p)})"
            measured = (
                f"{rate(g.m('jobs_per_s'))} (steps) in {_seconds(g.m('seconds'))} = "
                f"**{_pct(ratio)}** of `enqueue_many` of {p['n']:,} jobs in one call "
                f"({rate(base)}); building it with `wf.add` took "
                f"{_seconds(g.m('build_seconds'))} more")
            rows.append((name, g, "≥ 50% of enqueue_many's rate", measured,
                         None if ratio is None else ratio >= INSERT_RATIO_TARGET))
    return rows
