"""What machine the numbers came from, and how busy it was with other work.

This machine is shared (tests of other work may run at the same time), so before every step the
runner samples how busy the CPUs are while the benchmark itself is idle; ``--wait-quiet`` waits
(bounded) for a quiet moment, and the report marks steps measured on a busy machine.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import anyio

__all__ = ["CpuMeter", "OthersMeter", "background_busy", "describe", "git_revision", "wait_quiet"]

#: CPU share used by others (0..1) above which a step counts as measured on a busy machine.
BUSY = 0.25
#: CPU used by other work during a step, in % of one core, above which the step is "noisy".
NOISY_PCT = 20.0
_TICKS = os.sysconf("SC_CLK_TCK")
#: PostgreSQL processes that serve everyone (their work is neither ours nor others').
_SHARED = ("checkpointer", "background writer", "walwriter", "logical replication",
           "autovacuum launcher", "stats collector", "postgres -D")


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]), idle


class CpuMeter:
    """Share of all CPUs busy between construction and :meth:`busy` (everything on the box)."""

    def __init__(self) -> None:
        self._start = _cpu_times()

    def busy(self) -> float:
        total0, idle0 = self._start
        total1, idle1 = _cpu_times()
        total = total1 - total0
        return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


def _processes() -> dict[int, tuple[int, float, str]]:
    """pid -> (ppid, CPU seconds used, command line) for every process we may read."""
    found: dict[int, tuple[int, float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = (int(stat[1]), (int(stat[11]) + int(stat[12])) / _TICKS, cmdline)
    return found


class OthersMeter:
    """CPU that other work used during a step, in % of one core.

    Ours: this process and its descendants (workers, py-spy), and PostgreSQL backends of the
    benchmark's databases (``soniq_bench_*`` is in their process title). PostgreSQL's shared
    background processes count for no one. Everything else is someone else's: on a shared machine
    that is the noise in a measurement. Processes that start and end inside the step are missed.
    """

    def __init__(self) -> None:
        self._start = _processes()
        self._t0 = time.monotonic()

    def others_pct(self) -> float:
        end = _processes()
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        ours = {os.getpid()}
        for _ in range(8):  # descendants, a few generations deep
            ours |= {pid for pid, (ppid, _cpu, _cmd) in end.items() if ppid in ours}
        used = 0.0
        for pid, (_ppid, cpu, cmd) in end.items():
            if pid in ours or "soniq_bench_" in cmd or any(tag in cmd for tag in _SHARED):
                continue
            before = self._start.get(pid)
            used += cpu - (before[1] if before is not None and before[2] == cmd else 0.0)
        return used / elapsed * 100.0


async def background_busy(seconds: float = 0.5) -> float:
    """Share of all CPUs busy over ``seconds`` (call it while the benchmark is idle)."""
    total0, idle0 = _cpu_times()
    await anyio.sleep(seconds)
    total1, idle1 = _cpu_times()
    total = total1 - total0
    return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


async def wait_quiet(limit: float) -> float:
    """Wait up to ``limit`` seconds for the machine to be quiet; returns the last busy share."""
    busy = await background_busy()
    with anyio.move_on_after(limit):
        while busy > BUSY:
            busy = await background_busy(1.0)
    return busy


def git_revision(root: Path) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}{' (src modified)' if dirty else ''}"


def describe() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory_gib": f"{mem_kib / 1024 / 1024:.1f}",
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
