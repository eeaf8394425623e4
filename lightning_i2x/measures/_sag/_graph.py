"""What SAG finds: minimal sufficient explanations and the graph over them (plain, JSON round trip)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SAGNode", "SAGEdge", "MSEResult", "SAG"]


@dataclass(frozen=True)
class SAGNode:
    """A set of regions shown alone and the target-class probability the model gives it."""

    regions: tuple[int, ...]
    probability: float
    is_root: bool


@dataclass(frozen=True)
class SAGEdge:
    """``child`` is ``parent`` without region ``removed``."""

    parent: tuple[int, ...]
    child: tuple[int, ...]
    removed: int


@dataclass(frozen=True)
class MSEResult:
    """What the beam search found for one image: every distinct MSE (smallest first, then most
    probable), the full image's and the fully blurred image's probability, and how many masked
    copies went through the model."""

    label: int
    full_probability: float
    baseline_probability: float
    threshold: float
    mses: tuple[tuple[tuple[int, ...], float], ...]
    evaluations: int


@dataclass(frozen=True)
class SAG:
    """A structured attention graph: roots = diverse MSEs, edges = one region removed."""

    label: int
    full_probability: float
    baseline_probability: float
    fraction: float
    floor: float
    mses: tuple[tuple[int, ...], ...]  # the roots, in the order chosen
    all_mses: tuple[tuple[int, ...], ...]  # every distinct MSE the search found
    nodes: tuple[SAGNode, ...]
    edges: tuple[SAGEdge, ...]
    region_map: tuple[tuple[int, ...], ...]
    region_kind: str  # "grid" or "map"
    evaluations: int

    def node(self, regions: Iterable[int]) -> SAGNode:
        key = tuple(sorted(int(r) for r in regions))
        for n in self.nodes:
            if n.regions == key:
                return n
        raise KeyError(f"no node {key}")

    def children(self, regions: Iterable[int]) -> list[SAGEdge]:
        key = tuple(sorted(int(r) for r in regions))
        return [e for e in self.edges if e.parent == key]

    def levels(self) -> list[list[SAGNode]]:
        """Nodes by depth (roots = 0, then the fewest removals from any root)."""
        depth = {r: 0 for r in self.mses}
        frontier = list(self.mses)
        while frontier:
            nxt = []
            for p in frontier:
                for e in self.children(p):
                    if e.child not in depth:
                        depth[e.child] = depth[p] + 1
                        nxt.append(e.child)
            frontier = nxt
        out: list[list[SAGNode]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
        for n in self.nodes:
            out[depth[n.regions]].append(n)
        return out

    def region_name(self, r: int) -> str:
        if self.region_kind == "grid":
            g = len(self.region_map[0])
            return f"r{r // g}c{r % g}"
        return f"P-{r}"

    def describe(self, regions: Iterable[int]) -> str:
        """"P-3 + P-17" (prototype regions) or "r0c1 + r2c2" (grid cells)."""
        names = [self.region_name(r) for r in regions]
        return " + ".join(names) if names else "(nothing)"

    def mse_lines(self) -> list[str]:
        """The roots as text, one line each: "P-3 + P-17: p=0.93 (98% of the full image's)"."""
        out = []
        for m in self.mses:
            p = self.node(m).probability
            share = f" ({p / self.full_probability:.0%} of the full image's)" if self.full_probability > 0 else ""
            out.append(f"{self.describe(m)}: p={p:.2f}{share}")
        return out

    def to_dict(self) -> dict:
        """Plain lists, ints and floats (JSON-serialisable)."""
        return {
            "label": self.label,
            "full_probability": self.full_probability,
            "baseline_probability": self.baseline_probability,
            "fraction": self.fraction,
            "floor": self.floor,
            "mses": [list(m) for m in self.mses],
            "all_mses": [list(m) for m in self.all_mses],
            "nodes": [{"regions": list(n.regions), "probability": n.probability, "is_root": n.is_root} for n in self.nodes],
            "edges": [{"parent": list(e.parent), "child": list(e.child), "removed": e.removed} for e in self.edges],
            "region_map": [list(r) for r in self.region_map],
            "region_kind": self.region_kind,
            "evaluations": self.evaluations,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SAG":
        t = lambda xs: tuple(int(x) for x in xs)  # noqa: E731
        return cls(
            label=int(d["label"]),
            full_probability=float(d["full_probability"]),
            baseline_probability=float(d["baseline_probability"]),
            fraction=float(d["fraction"]),
            floor=float(d["floor"]),
            mses=tuple(t(m) for m in d["mses"]),
            all_mses=tuple(t(m) for m in d["all_mses"]),
            nodes=tuple(SAGNode(t(n["regions"]), float(n["probability"]), bool(n["is_root"])) for n in d["nodes"]),
            edges=tuple(SAGEdge(t(e["parent"]), t(e["child"]), int(e["removed"])) for e in d["edges"]),
            region_map=tuple(t(r) for r in d["region_map"]),
            region_kind=str(d["region_kind"]),
            evaluations=int(d["evaluations"]),
        )

    def plot(self, image: torch.Tensor | np.ndarray | None = None, region_map: np.ndarray | None = None, *,
             max_per_level: int = 8, dpi: int = 80, title: str | None = None):
        """The graph as a matplotlib Figure (no pyplot): one row per level, roots on top; each node
        a thumbnail of the image with only its regions shown (the rest dimmed) and its
        probability, absolute and as a share of the full image's; lines from parent to child.
        Without ``image`` the nodes are drawn as text. At most ``max_per_level`` nodes a row.
        ``title`` replaces the first line ("SAG, class 3: full image p=..., blurred p=...")."""
        from ...viz import plot_sag

        return plot_sag(self, image=image, region_map=region_map, max_per_level=max_per_level, dpi=dpi, title=title)


