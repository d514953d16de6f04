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
from pathlib import Path

import anyio

__all__ = ["background_busy", "describe", "git_revision", "wait_quiet"]

#: CPU share used by others (0..1) above which a step counts as measured on a busy machine.
BUSY = 0.25


def _cpu_times() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]), idle


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
