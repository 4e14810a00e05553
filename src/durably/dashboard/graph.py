"""An execution's DAG laid out for an inline SVG: pure geometry, no I/O.

Tasks go in columns by level (a task's level is one more than its deepest dependency's, as
``Workflow.levels()`` groups them), in declaration order within a column; each edge is a
curve from a dependency's right side to its dependent's left side. A mapped task is one node
that carries its instances' counts per status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NODE_W, NODE_H = 168, 46
GAP_X, GAP_Y = 56, 18
PAD = 12

# One colour per status, shared by the SVG (fill) and the CSS badges (dashboard.css).
COLOURS = {
    "not_started": "#e5e7eb",
    "ready": "#bfdbfe",
    "waiting": "#c7d2fe",
    "running": "#93c5fd",
    "completed": "#86efac",
    "failed": "#fca5a5",
    "upstream_failed": "#fdba74",
    "skipped": "#d6d3d1",
    "abandoned": "#f9a8d4",
    "cancelled": "#d4d4d8",
}
UNKNOWN = "#f5f5f5"


@dataclass(frozen=True)
class Node:
    name: str
    status: str
    x: int
    y: int
    fill: str
    counts: str  # a mapped task's instances per status ("3 completed · 1 failed"), else ""

    @property
    def label(self) -> str:
        return self.name if len(self.name) <= 22 else self.name[:21] + "…"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str  # the SVG path data


@dataclass(frozen=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int


def levels(dependencies: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Task names by depth, in declaration order; a dependency outside the mapping (or a
    cycle, which a stored shape cannot have) counts as depth zero."""
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str]) -> int:
        if name in depth:
            return depth[name]
        deps = [d for d in dependencies.get(name, ()) if d in dependencies and d not in seen]
        depth[name] = 1 + max((level(d, seen | {name}) for d in deps), default=-1)
        return depth[name]

    grouped: dict[int, list[str]] = {}
    for name in dependencies:
        grouped.setdefault(level(name, frozenset()), []).append(name)
    return [grouped[k] for k in sorted(grouped)]


def layout(
    dependencies: Mapping[str, Sequence[str]],
    statuses: Mapping[str, str],
    instance_counts: Mapping[str, Mapping[str, int]] | None = None,
) -> Graph:
    """Where each task's node and each dependency's edge go."""
    counts = instance_counts or {}
    nodes: dict[str, Node] = {}
    columns = levels(dependencies)
    for col, names in enumerate(columns):
        for row, name in enumerate(names):
            status = statuses.get(name, "not_started")
            per = counts.get(name, {})
            nodes[name] = Node(
                name=name,
                status=status,
                x=PAD + col * (NODE_W + GAP_X),
                y=PAD + row * (NODE_H + GAP_Y),
                fill=COLOURS.get(status, UNKNOWN),
                counts=" · ".join(f"{n} {s}" for s, n in sorted(per.items())),
            )
    edges = []
    for name, deps in dependencies.items():
        for dep in deps:
            if dep in nodes and name in nodes:
                edges.append(Edge(dep, name, _curve(nodes[dep], nodes[name])))
    tallest = max((len(names) for names in columns), default=0)
    width = PAD * 2 + max(len(columns), 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max(tallest, 1) * (NODE_H + GAP_Y) - GAP_Y
    return Graph(list(nodes.values()), edges, width, height)


def _curve(a: Node, b: Node) -> str:
    x1, y1 = a.x + NODE_W, a.y + NODE_H // 2
    x2, y2 = b.x, b.y + NODE_H // 2
    mid = (x1 + x2) // 2
    return f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"
