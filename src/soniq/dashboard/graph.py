"""A workflow's graph as numbers for an SVG the template draws: steps as boxes in columns by
dependency depth (the longest path from a root), rows within a column in enqueue order, and one
edge per dependency between drawn steps. No script and no library: the browser only renders the
SVG the page carries, coloured by the stylesheet (``node-<status>``).

At most :data:`MAX_DRAWN` steps are drawn (the page reads only that many; the first in enqueue
order), so a 10,000-step batch costs the page what a 500-step one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from soniq.types import WorkflowStep

__all__ = ["MAX_DRAWN", "Edge", "Graph", "Node", "layout"]

#: The most steps one graph draws.
MAX_DRAWN = 500
#: Box size and the gaps between boxes, in SVG user units (pixels at 100%).
BOX_W, BOX_H = 168, 34
GAP_X, GAP_Y = 56, 14
MARGIN = 8
#: Characters of a step name shown in its box (the full name is its tooltip).
LABEL_CHARS = 22


@dataclass(frozen=True, slots=True)
class Node:
    """A step's box: its top-left corner, its label and what links to its job."""

    key: str  # the step name (job id for a step without one)
    job_id: str
    job_name: str
    status: str
    label: str
    column: int
    row: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Edge:
    """A dependency, from the right side of its box to the left side of the dependent's, as
    an SVG path (``d``)."""

    source: str
    target: str
    d: str


@dataclass(frozen=True, slots=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int
    box_w: int = BOX_W
    box_h: int = BOX_H


def _label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def _depths(keys: Sequence[str], parents: dict[str, list[str]]) -> dict[str, int]:
    """Each step's column: 0 for a root, else one more than its deepest drawn dependency."""
    depth: dict[str, int] = {}
    try:
        order = list(TopologicalSorter(parents).static_order())
    except CycleError:  # cannot be stored, but a hand-edited table should still draw
        order = list(keys)
    for key in order:
        if key in parents:
            depth[key] = 1 + max((depth.get(p, 0) for p in parents[key]), default=-1)
    return depth


def layout(steps: Sequence[WorkflowStep]) -> Graph:
    """The graph of ``steps`` (at most :data:`MAX_DRAWN` of them drawn); dependencies on steps
    not among them are left out."""
    drawn = list(steps[:MAX_DRAWN])
    keys = [step["name"] or step["job_id"] for step in drawn]
    known = set(keys)
    parents = {key: [d for d in step["depends_on"] if d in known]
               for key, step in zip(keys, drawn, strict=True)}
    depth = _depths(keys, parents)
    rows: dict[int, int] = {}
    nodes: dict[str, Node] = {}
    for key, step in zip(keys, drawn, strict=True):
        column = depth.get(key, 0)
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes[key] = Node(key=key, job_id=step["job_id"], job_name=step["job_name"],
                          status=step["status"], label=_label(key), column=column, row=row,
                          x=MARGIN + column * (BOX_W + GAP_X), y=MARGIN + row * (BOX_H + GAP_Y))
    edges = []
    for key, dependencies in parents.items():
        end = nodes[key]
        for dependency in dependencies:
            start = nodes[dependency]
            x1, y1 = start.x + BOX_W, start.y + BOX_H // 2
            x2, y2 = end.x - 4, end.y + BOX_H // 2  # the arrowhead ends at the box
            bend = (x2 - x1) // 2
            edges.append(Edge(source=dependency, target=key,
                              d=f"M{x1} {y1} C{x1 + bend} {y1} {x2 - bend} {y2} {x2} {y2}"))
    columns = max(rows, default=-1) + 1
    height_rows = max(rows.values(), default=0)
    return Graph(nodes=list(nodes.values()), edges=edges,
                 width=2 * MARGIN + max(columns, 1) * (BOX_W + GAP_X) - GAP_X,
                 height=2 * MARGIN + max(height_rows, 1) * (BOX_H + GAP_Y) - GAP_Y)
