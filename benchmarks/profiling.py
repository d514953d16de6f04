"""Summaries of py-spy's collapsed stacks (``--format raw``): where the worker's time goes.

Each line of the file is ``frame;frame;...;frame count`` (outermost first), a frame being
``function (file:line)``. *Self* time is charged to the innermost frame, *total* time to every
distinct function on the stack. Shares are of the samples in which the worker was busy: py-spy
counts an event loop blocked in ``epoll`` as active, so those samples are counted apart.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["summarize"]

#: Innermost frames of a thread that is only waiting (event loop in epoll, idle thread).
_WAITING = ("EpollSelector.select (", "EpollIOManager.get_events (", "Condition.wait (threading",
            "TextIOWrapper.readline", "readline (")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """``function (short/path.py)``: lines dropped, so a function's samples add up."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def summarize(path: Path, *, top: int = 15) -> str:
    """A Markdown summary: the top functions by self and by total samples, in percent."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        if frames[-1].startswith(_WAITING):
            waiting += count  # the event loop blocked in epoll: idle, though py-spy counts it
            continue
        samples += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            total_counts[name] += count
    if samples == 0:
        return f"(no samples in {path.name})"
    intro = (f"{samples} busy samples in `{path.name}` (and {waiting} waiting in epoll, left "
             "out); shares are of the busy samples")
    lines = [intro, "",
             "| self % | function | | total % | function |", "|---:|---|---|---:|---|"]
    by_self = self_counts.most_common(top)
    by_total = total_counts.most_common(top)
    for i in range(top):
        left = (f"{by_self[i][1] / samples * 100:.1f}", f"`{by_self[i][0]}`") if i < len(by_self) else ("", "")
        right = (f"{by_total[i][1] / samples * 100:.1f}", f"`{by_total[i][0]}`") if i < len(by_total) else ("", "")
        lines.append(f"| {left[0]} | {left[1]} | | {right[0]} | {right[1]} |")
    return "\n".join(lines)
