"""Structured attention graphs (SAG; Shitole, Li, Kahng, Tadepalli and Fern, NeurIPS 2021, "One
Explanation is Not Enough"): the several, each sufficient, ways a classifier reaches a confident
prediction for one image, which a single heatmap hides.

- A *minimal sufficient explanation* (MSE) is a set of image regions that, shown alone (every other
  pixel replaced by a blurred copy of the image), keeps the target-class probability at or above
  ``fraction`` of the full image's, and from which no region can be dropped without falling below.
  They are found by SAG's beam search: grow region sets one region at a time from the empty set,
  every candidate of a step scored by the model in one batch; a candidate that reaches the
  threshold is pruned to a minimal set (regions removed while it stays sufficient) and kept as a
  root, the best ``beam_width`` of the others are grown further.
- Several MSEs that differ (pairwise at most ``max_overlap`` regions in common) become the roots of
  the *graph*; each node's children drop one region each and show the probability that remains;
  a node is expanded while its probability is above ``floor`` of the full image's (SAG's rule).

Regions are an integer (h, w) map - an image's I2X prototype assignment at feature resolution
(region ids = prototype ids, so an MSE reads "P-3 + P-17") or SAG's coarse grid (``"grid"``) -
upsampled to pixels with ``perturb.pixel_mask``; negative ids are never shown. Fills, masking and
batched probabilities are ``lightning_i2x.perturb``'s. Pure torch/NumPy; the model's modes,
gradients and the RNGs are left as they were.

Defaults follow the authors' released code (github.com/viv92/structured-attention-graphs,
``main_generate_sag.py``): probability factor 0.9, beam width 3, at most 10 roots searched, one
region of overlap allowed between roots, 3 roots shown, nodes expanded above 40% of the full
image's probability, at most 3 children a node, no cap on the root size (their 49 = every cell of
the 7 x 7 grid). Our own: at most 40 nodes a graph; the blur's sigma is 0.2 x the image side
(theirs: 50 px on 224 px, 0.22; a lighter blur leaves a digit legible); the search stops
``size_slack`` = 2 sizes past its first MSE (the authors' search has no such bound), which on the
demo CNN kept the shown roots of every image while scoring fewer masked copies
(``benchmarks/results/sag-cpu.md``).

``SAGMeasure`` runs it inside ``I2XCallback(measures=[...])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Sequence

import numpy as np
import torch

from .guards import preserved_rng
from .perturb import apply_mask, fill_values, hiding_sigma, pixel_mask, target_probabilities

__all__ = [
    "SAG",
    "SAGNode",
    "SAGEdge",
    "MSEResult",
    "grid_regions",
    "default_grid_size",
    "default_blur_sigma",
    "minimal_sufficient_explanations",
    "diverse_mses",
    "sag",
    "mse_stats",
    "SAGMeasure",
    "StoredSAG",
    "stored_sags",
    "DEFAULT_SIZE_SLACK",
]

ForwardFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
Regions = Any  # "grid" | (h, w) integer array / tensor

# the authors' defaults (main_generate_sag.py)
DEFAULT_FRACTION = 0.9
DEFAULT_BEAM_WIDTH = 3
DEFAULT_MAX_ROOTS = 10
DEFAULT_MAX_OVERLAP = 1
DEFAULT_MAX_MSES = 3
DEFAULT_FLOOR = 0.4
DEFAULT_MAX_CHILDREN = 3
DEFAULT_MAX_NODES = 40
# ours, chosen by benchmarks/sag.py (results in benchmarks/results/sag-cpu.md)
DEFAULT_BLUR = 0.2
DEFAULT_SIZE_SLACK = 2


# -- regions ------------------------------------------------------------------------------------------
def default_blur_sigma(image_size: tuple[int, int]) -> float:
    """The blur that hides what is not shown: sigma = ``DEFAULT_BLUR`` (0.2) x the image's side
    (``perturb.hiding_sigma``), near the authors' 50 px on 224 px images (0.22). A lighter blur (half a
    region cell) leaves a digit legible: the demo CNN kept most of its confidence on the fully
    blurred image, so the empty set was "sufficient" and no region mattered."""
    return hiding_sigma(image_size, DEFAULT_BLUR)


def default_grid_size(image_size: tuple[int, int]) -> int:
    """SAG's 7 x 7 grid (32 px cells on 224 px images) for images of 112 px or more; 4 x 4 below,
    so cells stay 7-8 px on 28-32 px images (a 7 x 7 grid would cut an MNIST digit into 4 px cells
    too small to carry a cue)."""
    return 7 if min(image_size) >= 112 else 4


def grid_regions(image_size: tuple[int, int], grid_size: int | None = None) -> np.ndarray:
    """A (g, g) region map numbering the cells of a g x g grid row by row (0 .. g*g-1)."""
    g = default_grid_size(image_size) if grid_size is None else int(grid_size)
    if g < 1 or g > min(image_size):
        raise ValueError(f"grid_size must be between 1 and the image side {min(image_size)}, got {g}")
    return np.arange(g * g, dtype=np.int64).reshape(g, g)


def _region_map(regions: Regions, image_size: tuple[int, int], grid_size: int | None) -> tuple[np.ndarray, str]:
    if isinstance(regions, str):
        if regions != "grid":
            raise ValueError(f'regions must be "grid" or an integer (h, w) region map, got {regions!r}')
        return grid_regions(image_size, grid_size), "grid"
    arr = regions.detach().cpu().numpy() if isinstance(regions, torch.Tensor) else np.asarray(regions)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"a region map holds integer region ids (e.g. a prototype assignment), got dtype {arr.dtype}; "
                         'pass regions="grid" for a grid')
    if arr.ndim != 2:
        raise ValueError(f"a region map is one (h, w) integer array per image, got shape {arr.shape}")
    if arr.size == 0 or not (arr >= 0).any():
        raise ValueError(f"the region map of shape {arr.shape} holds no region (ids >= 0); give at least one region")
    h, w = arr.shape
    if h > image_size[0] or w > image_size[1]:
        raise ValueError(f"region map of shape {arr.shape} is finer than the image ({image_size[0]} x {image_size[1]}): "
                         "give it at feature or pixel resolution, at most the image's size")
    return arr.astype(np.int64), "map"


def _region_masks(region_map: np.ndarray, image_size: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """The region ids (ascending, negative ids left out) and their (R, H, W) pixel masks."""
    ids = [int(v) for v in np.unique(region_map) if v >= 0]
    masks = pixel_mask(region_map[None] == np.asarray(ids)[:, None, None], image_size)
    return ids, masks


# -- results ------------------------------------------------------------------------------------------
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
        from ._sag_plot import plot_sag

        return plot_sag(self, image=image, region_map=region_map, max_per_level=max_per_level, dpi=dpi, title=title)


# -- search (generators that ask for probabilities; a driver batches them across images) ----------
Request = list  # list[frozenset[int]] of region indices
Search = Generator[Request, list, Any]


def _prune(sets: list[frozenset], probs: list[float], thr: float) -> Search:
    """Drop regions from each sufficient set while it stays sufficient: each round scores every
    single-region removal of every set in one request and keeps the most probable sufficient one,
    until no removal is sufficient (a 1-minimal set: with a model that never loses probability when
    shown more, no subset at all is sufficient)."""
    cur = list(zip(sets, probs))
    done: list[tuple[frozenset, float]] = [None] * len(cur)  # type: ignore[list-item]
    active = list(range(len(cur)))
    while active:
        req = []
        for i in active:
            req += [cur[i][0] - {r} for r in sorted(cur[i][0])]
        got = yield req
        table = dict(zip(req, got))
        still = []
        for i in active:
            s, p = cur[i]
            best = max(((table[s - {r}], -r, s - {r}) for r in sorted(s)), default=None)
            if best is not None and best[0] >= thr:
                cur[i] = (best[2], best[0])
                still.append(i)
            else:
                done[i] = (s, p)
        active = still
    return done


def _beam_search(n_regions: int, thr: float, beam_width: int, max_size: int, max_roots: int,
                 size_slack: int | None = None) -> Search:
    """SAG's beam search over region indices 0..n-1; returns {MSE: probability}. It stops
    ``size_slack`` sizes after the first size that yielded an MSE (None: no such bound)."""
    empty = frozenset()
    (p0,) = yield [empty]
    if p0 >= thr:  # the blurred image alone suffices: the empty set is the one MSE
        return {empty: p0}
    roots: dict[frozenset, float] = {}
    beam = [empty]
    first = None  # the size at which the first MSE turned up
    for size in range(1, max_size + 1):
        cands = sorted({s | {r} for s in beam for r in range(n_regions) if r not in s}, key=lambda s: sorted(s))
        if not cands:
            break
        probs = yield cands
        order = sorted(zip(cands, probs), key=lambda cp: (-cp[1], sorted(cp[0])))
        sufficient, beam = [], []
        for c, p in order:
            if p >= thr:
                # a candidate holding a root already found is not minimal: no need to prune it
                if not any(r <= c for r in roots):
                    sufficient.append((c, p))
            elif len(beam) < beam_width:
                beam.append(c)
        if sufficient:
            pruned = yield from _prune([c for c, _ in sufficient], [p for _, p in sufficient], thr)
            for m, p in pruned:
                roots.setdefault(m, p)
        if roots and first is None:
            first = size
        if len(roots) >= max_roots or not beam or (first is not None and size_slack is not None and size - first >= size_slack):
            break
    return roots


def _graph(roots: list[frozenset], root_probs: list[float], floor_thr: float, max_children: int | None,
           max_nodes: int) -> Search:
    """SAG's graph: an expanded node's children each drop one of its regions; a node is expanded
    when its probability is above ``floor_thr`` and it holds two regions or more. All of a level's
    children are scored in one request; each parent keeps the ``max_children`` whose removal costs
    the most probability (the informative edges; None keeps all), and no node is added past
    ``max_nodes``. Returns ({node: probability}, [(parent, child, removed index)])."""
    nodes = dict(zip(roots, root_probs))
    edges: list[tuple[frozenset, frozenset, int]] = []
    expanded: set = set()
    frontier = [r for r in roots if nodes[r] > floor_thr and len(r) > 1]
    while frontier and len(nodes) < max_nodes:
        pairs = [(p, p - {r}, r) for p in frontier for r in sorted(p)]
        expanded.update(frontier)
        new = sorted({c for _, c, _ in pairs if c not in nodes}, key=lambda s: sorted(s))
        got = (yield new) if new else []
        scored = dict(zip(new, got))
        prob = lambda c: nodes[c] if c in nodes else scored[c]  # noqa: E731
        kept = []
        for p in frontier:
            mine = sorted(((p - {r}, r) for r in sorted(p)), key=lambda cr: (prob(cr[0]), cr[1]))
            kept += [(p, c, r) for c, r in (mine if max_children is None else mine[:max_children])]
        level = []
        for p, c, r in kept:
            if c not in nodes:
                if len(nodes) >= max_nodes:
                    continue
                nodes[c] = scored[c]
                level.append(c)
            edges.append((p, c, r))
        frontier = sorted({c for _, c, _ in kept if c in nodes and c not in expanded and nodes[c] > floor_thr and len(c) > 1},
                          key=lambda s: sorted(s))
    return nodes, edges


class _Prober:
    """Scores region sets of several images: builds the masked copies chunk by chunk (at most
    ``batch_size`` at a time) and sends them through ``target_probabilities``; remembers every
    answer, so no set is scored twice."""

    def __init__(self, model, images, labels, masks, fill_images, batch_size, forward_fn):
        self.model, self.images, self.labels = model, images, labels
        self.masks = masks  # list of (R_i, H*W) float tensors
        self.fills = fill_images
        self.batch_size, self.forward_fn = batch_size, forward_fn
        self.cache: list[dict] = [dict() for _ in range(len(images))]
        self.evaluations = [0] * len(images)

    def __call__(self, requests: list[tuple[int, list[frozenset]]]) -> list[list[float]]:
        todo = []
        for i, sets in requests:
            seen = set()
            for s in sets:
                if s not in self.cache[i] and s not in seen:
                    seen.add(s)
                    todo.append((i, s))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            idx = torch.tensor([i for i, _ in chunk], device=self.images.device)
            member = [torch.zeros(self.masks[i].shape[0]) for i, _ in chunk]
            for m, (_, s) in zip(member, chunk):
                m[list(s)] = 1.0
            shown = torch.stack([m.to(self.masks[i]) @ self.masks[i] for m, (i, _) in zip(member, chunk)]) > 0
            hidden = ~shown.view(len(chunk), *self.images.shape[2:])
            batch = apply_mask(self.images[idx], hidden, self.fills[idx])
            probs = target_probabilities(self.model, batch, self.labels[idx], batch_size=self.batch_size,
                                         forward_fn=self.forward_fn).cpu().tolist()
            for (i, s), p in zip(chunk, probs):
                self.cache[i][s] = float(p)
                self.evaluations[i] += 1
        return [[self.cache[i][s] for s in sets] for i, sets in requests]


def _drive(searches: list[Search | None], prober: _Prober) -> list[Any]:
    """Run every image's search in lock step: each round, every request of every search goes
    through the model together."""
    results: list[Any] = [None] * len(searches)
    pending: dict[int, list] = {}
    for i, gen in enumerate(searches):
        if gen is None:
            continue
        try:
            pending[i] = next(gen)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        keys = list(pending)
        answers = prober([(i, pending[i]) for i in keys])
        for i, ans in zip(keys, answers):
            try:
                pending[i] = searches[i].send(ans)  # type: ignore[union-attr]
            except StopIteration as stop:
                results[i] = stop.value
                del pending[i]
    return results


# -- checks and set-up --------------------------------------------------------------------------------
def _check_image(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor of shape (C, H, W), got {type(image).__name__}")
    if image.ndim != 3:
        raise ValueError(f"image must be one (C, H, W) tensor, got shape {tuple(image.shape)}; "
                         "for a batch call sag() once per image, or mse_stats() for statistics")
    return image


def _check_options(fraction, floor, beam_width, max_size, max_overlap, max_roots, max_mses, batch_size, size_slack=None) -> None:
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1] (the share of the full image's probability an MSE keeps), got {fraction!r}")
    if not (isinstance(floor, (int, float)) and 0 <= floor <= 1):
        raise ValueError(f"floor must be in [0, 1] (a share of the full image's probability), got {floor!r}")
    for name, v, lo in (("beam_width", beam_width, 1), ("max_overlap", max_overlap, 0), ("max_roots", max_roots, 1),
                        ("max_mses", max_mses, 1), ("batch_size", batch_size, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if max_size is not None and (not isinstance(max_size, (int, np.integer)) or max_size < 1):
        raise ValueError(f"max_size must be an integer >= 1 or None (no limit), got {max_size!r}")
    if size_slack is not None and (not isinstance(size_slack, (int, np.integer)) or isinstance(size_slack, bool) or size_slack < 0):
        raise ValueError(f"size_slack must be an integer >= 0 or None (no bound), got {size_slack!r}")


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("the model has no parameters: SAG needs a torch model with at least one") from None


def _setup(model, images: torch.Tensor, labels: torch.Tensor, region_maps: list[np.ndarray], sigma, batch_size, forward_fn):
    device = _model_device(model)
    x = images.detach().to(device)
    size = tuple(x.shape[-2:])
    masks = []
    ids_all = []
    for rm in region_maps:
        ids, m = _region_masks(rm, size)
        ids_all.append(ids)
        masks.append(torch.from_numpy(m.reshape(len(ids), -1).astype(np.float32)).to(device))
    fills = fill_values(x, "blur", sigma=default_blur_sigma(size) if sigma is None else float(sigma)) if len(x) else x
    prober = _Prober(model, x, labels.to(device), masks, fills, batch_size, forward_fn)
    return prober, ids_all


def _full_probabilities(model, images, labels, batch_size, forward_fn) -> list[float]:
    try:
        return target_probabilities(model, images, labels, batch_size=batch_size, forward_fn=forward_fn).cpu().tolist()
    except (IndexError, RuntimeError) as err:
        if "index" in str(err).lower() or "out of bounds" in str(err).lower():
            raise ValueError(f"label out of range for the model's outputs: {labels.tolist()[:8]}") from err
        raise


def _sorted_mses(found: dict) -> list[tuple[tuple[int, ...], float]]:
    return sorted(((tuple(sorted(m)), p) for m, p in found.items()), key=lambda mp: (len(mp[0]), -mp[1], mp[0]))


# -- public API ---------------------------------------------------------------------------------------
def diverse_mses(mses: Sequence[tuple[Sequence[int], float]], max_overlap: int = DEFAULT_MAX_OVERLAP,
                 max_count: int | None = None) -> list[tuple[int, ...]]:
    """The largest family of MSEs that pairwise share at most ``max_overlap`` regions (SAG's
    maximal-overlap set, searched exactly), ties to fewer regions in all, then higher summed
    probability; ordered smallest first and cut to ``max_count``."""
    items = sorted(((tuple(sorted(m)), float(p)) for m, p in mses), key=lambda mp: (len(mp[0]), -mp[1], mp[0]))
    n = len(items)
    sets = [set(m) for m, _ in items]
    ok = [[len(sets[i] & sets[j]) <= max_overlap for j in range(n)] for i in range(n)]
    best: tuple = (0, 0, 0.0, ())

    def score(chosen):
        return (len(chosen), -sum(len(items[i][0]) for i in chosen), sum(items[i][1] for i in chosen))

    def grow(chosen: tuple, start: int):
        nonlocal best
        s = score(chosen)
        if s > best[:3]:
            best = (*s, chosen)
        for j in range(start, n):
            if len(chosen) + (n - j) < best[0]:
                return  # not even taking every rest could beat the best
            if all(ok[i][j] for i in chosen):
                grow(chosen + (j,), j + 1)

    grow((), 0)
    out = [items[i][0] for i in best[3]]
    return out if max_count is None else out[:max_count]


def minimal_sufficient_explanations(
    model: torch.nn.Module,
    image: torch.Tensor,
    label: int,
    regions: Regions = "grid",
    *,
    fraction: float = DEFAULT_FRACTION,
    beam_width: int = DEFAULT_BEAM_WIDTH,
    max_size: int | None = None,
    max_roots: int = DEFAULT_MAX_ROOTS,
    size_slack: int | None = DEFAULT_SIZE_SLACK,
    grid_size: int | None = None,
    sigma: float | None = None,
    batch_size: int = 256,
    forward_fn: ForwardFn | None = None,
) -> MSEResult:
    """Every distinct MSE the beam search finds for ``image`` and class ``label`` (see the module
    docstring). ``max_size`` caps the regions in a set (None: no cap); the search stops once
    ``max_roots`` MSEs are found, the beam empties, or it has grown sets ``size_slack`` regions
    past the size at which it found its first MSE (0: only the smallest MSEs and what pruning
    larger sufficient sets of that step gives; None: no such bound, the authors' search).
    ``sigma`` is the blur's (default ``default_blur_sigma``: 0.2 x the image's side)."""
    _check_image(image)
    _check_options(fraction, 0.0, beam_width, max_size, 0, max_roots, 1, batch_size, size_slack)
    size = tuple(image.shape[-2:])
    rm, _ = _region_map(regions, size, grid_size)
    return _mses_many(model, image[None], torch.as_tensor([int(label)]), [rm], fraction, beam_width, max_size, max_roots,
                      size_slack, sigma, batch_size, forward_fn)[0][0]


def _mses_many(model, images, labels, region_maps, fraction, beam_width, max_size, max_roots, size_slack, sigma, batch_size,
               forward_fn):
    with preserved_rng():
        prober, ids_all = _setup(model, images, labels, region_maps, sigma, batch_size, forward_fn)
        full = _full_probabilities(model, prober.images, prober.labels, batch_size, forward_fn)
        thr = [fraction * f for f in full]
        searches = [_beam_search(len(ids), t, beam_width, len(ids) if max_size is None else min(max_size, len(ids)), max_roots,
                                 size_slack) for ids, t in zip(ids_all, thr)]
        found = _drive(searches, prober)
    out = []
    for i, ids in enumerate(ids_all):
        mses = tuple((tuple(ids[r] for r in m), p) for m, p in _sorted_mses(found[i]))
        base = prober.cache[i][frozenset()]
        out.append(MSEResult(int(labels[i]), float(full[i]), base, float(thr[i]), mses, prober.evaluations[i] + 1))
    return out, prober, ids_all


def sag(
    model: torch.nn.Module,
    image: torch.Tensor,
    label: int,
    regions: Regions = "grid",
    *,
    fraction: float = DEFAULT_FRACTION,
    beam_width: int = DEFAULT_BEAM_WIDTH,
    max_size: int | None = None,
    max_overlap: int = DEFAULT_MAX_OVERLAP,
    max_roots: int = DEFAULT_MAX_ROOTS,
    size_slack: int | None = DEFAULT_SIZE_SLACK,
    max_mses: int = DEFAULT_MAX_MSES,
    floor: float = DEFAULT_FLOOR,
    max_children: int | None = DEFAULT_MAX_CHILDREN,
    max_nodes: int = DEFAULT_MAX_NODES,
    grid_size: int | None = None,
    sigma: float | None = None,
    batch_size: int = 256,
    forward_fn: ForwardFn | None = None,
) -> SAG:
    """The structured attention graph of ``image`` for class ``label``.

    ``regions``: ``"grid"`` (a ``grid_size`` grid, default ``default_grid_size``) or an integer
    (h, w) region map (e.g. the image's prototype assignment at feature resolution). The roots are
    at most ``max_mses`` MSEs pairwise sharing at most ``max_overlap`` regions (``diverse_mses``
    over every MSE found); a node is expanded (one child per region, that region removed) while its
    probability is above ``floor`` x the full image's and it holds two regions or more; of its
    children it keeps the ``max_children`` whose removal costs the most probability (the authors'
    drawing shows 3; None: all), and the graph stops growing at ``max_nodes`` nodes (a root of k
    regions has up to 2^k - 1 subsets). All other arguments as in
    ``minimal_sufficient_explanations``.

    Raises ValueError for an image not (C, H, W), a fraction outside (0, 1], a region map without
    regions or finer than the image, and other out-of-range options."""
    _check_image(image)
    _check_options(fraction, floor, beam_width, max_size, max_overlap, max_roots, max_mses, batch_size, size_slack)
    if max_children is not None and (not isinstance(max_children, (int, np.integer)) or max_children < 1):
        raise ValueError(f"max_children must be an integer >= 1 or None (all), got {max_children!r}")
    if not isinstance(max_nodes, (int, np.integer)) or max_nodes < 1:
        raise ValueError(f"max_nodes must be an integer >= 1, got {max_nodes!r}")
    size = tuple(image.shape[-2:])
    rm, kind = _region_map(regions, size, grid_size)
    (res,), prober, (ids,) = _mses_many(model, image[None], torch.as_tensor([int(label)]), [rm], fraction, beam_width,
                                        max_size, max_roots, size_slack, sigma, batch_size, forward_fn)
    index = {r: k for k, r in enumerate(ids)}
    roots_ids = diverse_mses(res.mses, max_overlap, max_mses)
    roots = [frozenset(index[r] for r in m) for m in roots_ids]
    root_probs = [prober.cache[0][r] for r in roots]
    with preserved_rng():
        ((nodes, edges),) = _drive([_graph(roots, root_probs, floor * res.full_probability, max_children, max_nodes)], prober)
    to_ids = lambda s: tuple(sorted(ids[r] for r in s))  # noqa: E731
    root_set = set(roots)
    node_list = sorted(nodes.items(), key=lambda sp: (-len(sp[0]), sorted(sp[0])))
    return SAG(
        label=res.label,
        full_probability=res.full_probability,
        baseline_probability=res.baseline_probability,
        fraction=float(fraction),
        floor=float(floor),
        mses=tuple(tuple(m) for m in roots_ids),
        all_mses=tuple(m for m, _ in res.mses),
        nodes=tuple(SAGNode(to_ids(s), float(p), s in root_set) for s, p in node_list),
        edges=tuple(SAGEdge(to_ids(p), to_ids(c), ids[r]) for p, c, r in edges),
        region_map=tuple(tuple(int(v) for v in row) for row in rm),
        region_kind=kind,
        evaluations=prober.evaluations[0] + 1,
    )


def mse_stats(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    region_maps: Regions = "grid",
    *,
    fraction: float = DEFAULT_FRACTION,
    beam_width: int = DEFAULT_BEAM_WIDTH,
    max_size: int | None = None,
    max_roots: int = DEFAULT_MAX_ROOTS,
    size_slack: int | None = DEFAULT_SIZE_SLACK,
    grid_size: int | None = None,
    sigma: float | None = None,
    batch_size: int = 256,
    forward_fn: ForwardFn | None = None,
) -> dict[str, float]:
    """Scalars over a set of (N, C, H, W) images for logging while training (``i2x/sag/<key>``):

    - ``multi_mse_share``: share of images with two or more disjoint MSEs (several independent
      ways to the prediction);
    - ``mean_mse_size``: mean number of regions of an MSE (averaged per image, then over the
      images with at least one MSE; NaN if none has one);
    - ``found_share``: share of images with at least one MSE (within ``max_size``);
    - ``mean_num_mses``: mean number of distinct MSEs found per image;
    - ``evaluations_per_image``: masked copies scored per image (forward passes without autograd);
    - ``n_images``.

    ``region_maps``: ``"grid"``, one (h, w) map for all images, or (N, h, w) maps (e.g. the probe
    set's prototype assignment). Every image's search runs in lock step, so each step of all of them
    goes through the model in shared batches."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be an (N, C, H, W) tensor, got {tuple(getattr(images, 'shape', ()))}")
    _check_options(fraction, 0.0, beam_width, max_size, 0, max_roots, 1, batch_size, size_slack)
    labels = torch.as_tensor(labels).reshape(-1)
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{n} images but {labels.shape[0]} labels")
    size = tuple(images.shape[-2:])
    if isinstance(region_maps, str):
        maps = [_region_map(region_maps, size, grid_size)[0]] * n
    else:
        arr = region_maps.detach().cpu().numpy() if isinstance(region_maps, torch.Tensor) else np.asarray(region_maps)
        if arr.ndim == 2:
            maps = [_region_map(arr, size, grid_size)[0]] * n
        elif arr.ndim == 3 and arr.shape[0] == n:
            maps = [_region_map(a, size, grid_size)[0] for a in arr]
        else:
            raise ValueError(f"region_maps must be \"grid\", one (h, w) map or (N={n}, h, w) maps, got shape {arr.shape}")
    if n == 0:
        return {"multi_mse_share": math.nan, "mean_mse_size": math.nan, "found_share": math.nan,
                "mean_num_mses": math.nan, "evaluations_per_image": 0.0, "n_images": 0.0}
    results, _, _ = _mses_many(model, images, labels, maps, fraction, beam_width, max_size, max_roots, size_slack, sigma,
                               batch_size, forward_fn)
    return {
        **_stats([[m for m, _ in r.mses] for r in results]),
        "found_share": float(np.mean([bool(r.mses) for r in results])),
        "mean_num_mses": float(np.mean([len(r.mses) for r in results])),
        "evaluations_per_image": float(np.mean([r.evaluations for r in results])),
        "n_images": float(n),
    }


# -- the measure the callback runs --------------------------------------------------------------------
@dataclass(frozen=True)
class StoredSAG:
    """One SAG a ``SAGMeasure`` stored: its class, the probe image it explains (index into the
    run's probe set), the graph, and the checkpoint it was measured at."""

    cls: int
    image: int
    sag: SAG
    checkpoint: int


def stored_sags(run, name: str = "sag") -> list[StoredSAG]:
    """The SAGs a ``SAGMeasure`` named ``name`` stored in ``run`` (empty when there are none).
    Raises ``I2XRunError`` when the attachment is damaged."""
    from .run import I2XRunError

    found = run.attachment(name)
    if found is None:
        return []
    data, checkpoint = found
    try:
        return [StoredSAG(int(e["class"]), int(e["image"]), SAG.from_dict(e["sag"]), checkpoint) for e in data["sags"]]
    except (KeyError, TypeError, ValueError) as e:
        raise I2XRunError(f"{run.path}: the {name!r} attachment does not hold SAGs ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class SAGMeasure:
    """Minimal sufficient explanations while training, as a measure of ``I2XCallback(measures=[...])``
    (``lightning_i2x.measures``). Off by default: add ``SAGMeasure()`` to ``measures`` to run it.

    At each record (``when="record"``; ``"end"``: once, after fit) it takes, for each drawn class
    (``classes``; None: the classes the views draw, ``views.select_classes`` with the default
    ``ViewOptions``), the ``images_per_class`` probe images of that class the latest checkpoint
    classifies correctly with the highest confidence, and

    - records ``<name>/multi_mse_share`` (share of those images with two or more disjoint MSEs) and
      ``<name>/mean_mse_size`` (mean regions per MSE), logged as ``i2x/sag/...``;
    - stores the full SAG of the most confident image of each class as the attachment ``<name>``
      (``stored_sags(run)`` reads them back; the views draw them as ``i2x/class<n>/sag``, the
      report lists their MSEs).

    ``regions``: ``"prototypes"`` (each image's prototype assignment, so an MSE reads
    "P-3 + P-17") or ``"grid"``. The search options are ``sag()``'s. It needs the probe images in
    the run (``ProbePassOptions.store_images``, the default, for probes up to 64 MiB); it leaves
    the model's modes, gradients and the RNGs as they were.

    Cost: forward passes only, about ``evaluations`` masked copies per image (a few hundred on a
    7 x 7 prototype map; ``benchmarks/sag.py`` measures it) for ``images_per_class`` x classes
    images, plus each stored SAG's graph. With the defaults (3 classes, 4 images each) on the demo
    CNN that is about 3.6 probe passes of a 1000-image probe per record (13 s against 3.6 s on a
    loaded 2-core CPU; ``benchmarks/results/sag-cpu.md``).
    """

    name: str = "sag"
    when: str = "record"
    classes: tuple[int | str, ...] | None = None
    images_per_class: int = 4
    regions: str = "prototypes"
    fraction: float = DEFAULT_FRACTION
    beam_width: int = DEFAULT_BEAM_WIDTH
    max_size: int | None = None
    size_slack: int | None = DEFAULT_SIZE_SLACK
    max_roots: int = DEFAULT_MAX_ROOTS
    max_overlap: int = DEFAULT_MAX_OVERLAP
    max_mses: int = DEFAULT_MAX_MSES
    floor: float = DEFAULT_FLOOR
    max_children: int | None = DEFAULT_MAX_CHILDREN
    max_nodes: int = DEFAULT_MAX_NODES
    grid_size: int | None = None
    sigma: float | None = None
    batch_size: int = 256

    def __post_init__(self):
        from .options import _choice, _fail, _fraction, _int, _number, _set

        if not isinstance(self.name, str) or not self.name or not all(ch.isalnum() or ch in "-_" for ch in self.name):
            _fail(self, "name", "a non-empty name of letters, digits, '-' and '_'", self.name)
        _choice(self, "when", ("record", "end"))
        if self.classes is not None:
            classes = (self.classes,) if isinstance(self.classes, (str, int)) else self.classes
            if (not isinstance(classes, (list, tuple)) or not classes
                    or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)):
                _fail(self, "classes", "a non-empty list of class indices or names, or None", self.classes)
            _set(self, "classes", tuple(classes))
        _int(self, "images_per_class")
        _choice(self, "regions", ("prototypes", "grid"))
        _fraction(self, "fraction")
        _int(self, "beam_width")
        _int(self, "max_size", optional=True)
        _int(self, "size_slack", low=0, optional=True)
        _int(self, "max_roots")
        _int(self, "max_overlap", low=0)
        _int(self, "max_mses")
        _fraction(self, "floor", closed_low=True)
        _int(self, "max_children", optional=True)
        _int(self, "max_nodes")
        _int(self, "grid_size", optional=True)
        _number(self, "sigma", strict=True, optional=True)
        _int(self, "batch_size")

    def _search(self) -> dict[str, Any]:
        return dict(fraction=self.fraction, beam_width=self.beam_width, max_size=self.max_size, max_roots=self.max_roots,
                    size_slack=self.size_slack, sigma=self.sigma, batch_size=self.batch_size)

    def select_images(self, run, explanation) -> dict[int, list[int]]:
        """{class: probe indices}, most confident first: the images measured for each drawn class
        (correctly classified at the latest checkpoint; a class without one is left out)."""
        if self.classes is None:
            from .options import ViewOptions
            from .views import select_classes

            classes = select_classes(run, explanation, ViewOptions())
        else:
            classes = [explanation.class_index(c) for c in self.classes]
        conf = run.latest_confidences()
        pred = conf.argmax(axis=1)
        out = {}
        for c in classes:
            members = np.flatnonzero((run.labels == c) & (pred == c))
            if members.size:
                order = np.argsort(-conf[members, c], kind="stable")
                out[int(c)] = [int(i) for i in members[order[: self.images_per_class]]]
        return out

    def __call__(self, model, run, evidence, explanation, *, forward_fn: ForwardFn | None = None) -> None:
        if run.images is None:
            raise ValueError(f"SAGMeasure needs the probe images in the run, and {run.path} holds none: keep "
                             "ProbePassOptions.store_images=True (the default; probes up to 64 MiB)")
        chosen = self.select_images(run, explanation)
        images = torch.from_numpy(np.asarray(run.images, dtype=np.float32))
        assignment = run.assignment() if self.regions == "prototypes" else None

        def regions_of(i):
            return "grid" if assignment is None else assignment[i]

        mse_lists, sags = [], []
        for c, idx in chosen.items():  # the representative: its full graph (its search gives its MSEs too)
            g = sag(model, images[idx[0]], c, regions_of(idx[0]), max_overlap=self.max_overlap, max_mses=self.max_mses,
                    floor=self.floor, max_children=self.max_children, max_nodes=self.max_nodes, grid_size=self.grid_size,
                    forward_fn=forward_fn, **self._search())
            sags.append({"class": c, "image": idx[0], "sag": g.to_dict()})
            mse_lists.append(list(g.all_mses))
        rest = [(c, i) for c, idx in chosen.items() for i in idx[1:]]
        if rest:
            size = tuple(images.shape[-2:])
            maps = [_region_map(regions_of(i), size, self.grid_size)[0] for _, i in rest]
            results, _, _ = _mses_many(model, images[[i for _, i in rest]], torch.as_tensor([c for c, _ in rest]), maps,
                                       self.fraction, self.beam_width, self.max_size, self.max_roots, self.size_slack,
                                       self.sigma, self.batch_size, forward_fn)
            mse_lists += [[m for m, _ in r.mses] for r in results]
        stats = _stats(mse_lists)
        metrics = {f"{self.name}/{k}": stats[k] for k in ("multi_mse_share", "mean_mse_size") if math.isfinite(stats[k])}
        if metrics:
            run.record_metrics(metrics)
        run.save_attachment(self.name, data={"regions": self.regions, "sags": sags})


def _stats(mse_lists: list[list[tuple[int, ...]]]) -> dict[str, float]:
    """multi_mse_share and mean_mse_size (see ``mse_stats``) of each image's MSE list."""
    if not mse_lists:
        return {"multi_mse_share": math.nan, "mean_mse_size": math.nan}
    multi = [len(diverse_mses([(m, 0.0) for m in ms], 0)) >= 2 for ms in mse_lists]
    sizes = [float(np.mean([len(m) for m in ms])) for ms in mse_lists if ms]
    return {"multi_mse_share": float(np.mean(multi)), "mean_mse_size": float(np.mean(sizes)) if sizes else math.nan}
