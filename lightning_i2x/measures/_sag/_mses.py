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
from collections.abc import Sequence

import numpy as np
import torch

from ..._core import check_fraction, check_int
from ..._model import ForwardFn, model_device, preserved_rng
from ...perturb import fill_values, target_probabilities
from ._graph import SAG, MSEResult, SAGEdge, SAGNode
from ._regions import (
    DEFAULT_BEAM_WIDTH,
    DEFAULT_FLOOR,
    DEFAULT_FRACTION,
    DEFAULT_MAX_CHILDREN,
    DEFAULT_MAX_MSES,
    DEFAULT_MAX_NODES,
    DEFAULT_MAX_OVERLAP,
    DEFAULT_MAX_ROOTS,
    DEFAULT_SIZE_SLACK,
    Regions,
    region_map,
    region_masks,
    sag_blur_sigma,
)
from ._search import Prober, beam_search, build_graph, drive

__all__ = ["minimal_sufficient_explanations", "diverse_mses", "sag", "mse_stats", "mses_many", "mse_list_stats"]


# -- checks and set-up --------------------------------------------------------------------------------
def _check_image(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor of shape (C, H, W), got {type(image).__name__}")
    if image.ndim != 3:
        raise ValueError(f"image must be one (C, H, W) tensor, got shape {tuple(image.shape)}; "
                         "for a batch call sag() once per image, or mse_stats() for statistics")
    return image


def _check_options(fraction, floor, beam_width, max_size, max_overlap, max_roots, max_mses, batch_size, size_slack=None) -> None:
    check_fraction("sag", "fraction", fraction)
    check_fraction("sag", "floor", floor, closed_low=True)
    for name, v, lo in (("beam_width", beam_width, 1), ("max_overlap", max_overlap, 0), ("max_roots", max_roots, 1),
                        ("max_mses", max_mses, 1), ("batch_size", batch_size, 1)):
        check_int("sag", name, v, low=lo)
    check_int("sag", "max_size", max_size, optional=True)
    check_int("sag", "size_slack", size_slack, low=0, optional=True)


def _setup(model, images: torch.Tensor, labels: torch.Tensor, region_maps: list[np.ndarray], sigma, batch_size, forward_fn):
    if next(model.parameters(), None) is None:
        raise ValueError("the model has no parameters: SAG needs a torch model with at least one")
    device = model_device(model)
    x = images.detach().to(device)
    size = tuple(x.shape[-2:])
    masks = []
    ids_all = []
    for rm in region_maps:
        ids, m = region_masks(rm, size)
        ids_all.append(ids)
        masks.append(torch.from_numpy(m.reshape(len(ids), -1).astype(np.float32)).to(device))
    fills = fill_values(x, "blur", sigma=sag_blur_sigma(size) if sigma is None else float(sigma)) if len(x) else x
    prober = Prober(model, x, labels.to(device), masks, fills, batch_size, forward_fn)
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
    ``sigma`` is the blur's (default ``sag_blur_sigma``: 0.2 x the image's side)."""
    _check_image(image)
    _check_options(fraction, 0.0, beam_width, max_size, 0, max_roots, 1, batch_size, size_slack)
    size = tuple(image.shape[-2:])
    rm, _ = region_map(regions, size, grid_size)
    return mses_many(model, image[None], torch.as_tensor([int(label)]), [rm], fraction, beam_width, max_size, max_roots,
                      size_slack, sigma, batch_size, forward_fn)[0][0]


def mses_many(model, images, labels, region_maps, fraction, beam_width, max_size, max_roots, size_slack, sigma, batch_size,
               forward_fn):
    with preserved_rng():
        prober, ids_all = _setup(model, images, labels, region_maps, sigma, batch_size, forward_fn)
        full = _full_probabilities(model, prober.images, prober.labels, batch_size, forward_fn)
        thr = [fraction * f for f in full]
        searches = [beam_search(len(ids), t, beam_width, len(ids) if max_size is None else min(max_size, len(ids)), max_roots,
                                 size_slack) for ids, t in zip(ids_all, thr)]
        found = drive(searches, prober)
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
    rm, kind = region_map(regions, size, grid_size)
    (res,), prober, (ids,) = mses_many(model, image[None], torch.as_tensor([int(label)]), [rm], fraction, beam_width,
                                        max_size, max_roots, size_slack, sigma, batch_size, forward_fn)
    index = {r: k for k, r in enumerate(ids)}
    roots_ids = diverse_mses(res.mses, max_overlap, max_mses)
    roots = [frozenset(index[r] for r in m) for m in roots_ids]
    root_probs = [prober.cache[0][r] for r in roots]
    with preserved_rng():
        ((nodes, edges),) = drive([build_graph(roots, root_probs, floor * res.full_probability, max_children, max_nodes)], prober)
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
        maps = [region_map(region_maps, size, grid_size)[0]] * n
    else:
        arr = region_maps.detach().cpu().numpy() if isinstance(region_maps, torch.Tensor) else np.asarray(region_maps)
        if arr.ndim == 2:
            maps = [region_map(arr, size, grid_size)[0]] * n
        elif arr.ndim == 3 and arr.shape[0] == n:
            maps = [region_map(a, size, grid_size)[0] for a in arr]
        else:
            raise ValueError(f"region_maps must be \"grid\", one (h, w) map or (N={n}, h, w) maps, got shape {arr.shape}")
    if n == 0:
        return {"multi_mse_share": math.nan, "mean_mse_size": math.nan, "found_share": math.nan,
                "mean_num_mses": math.nan, "evaluations_per_image": 0.0, "n_images": 0.0}
    results, _, _ = mses_many(model, images, labels, maps, fraction, beam_width, max_size, max_roots, size_slack, sigma,
                               batch_size, forward_fn)
    return {
        **mse_list_stats([[m for m, _ in r.mses] for r in results]),
        "found_share": float(np.mean([bool(r.mses) for r in results])),
        "mean_num_mses": float(np.mean([len(r.mses) for r in results])),
        "evaluations_per_image": float(np.mean([r.evaluations for r in results])),
        "n_images": float(n),
    }


def mse_list_stats(mse_lists: list[list[tuple[int, ...]]]) -> dict[str, float]:
    """multi_mse_share and mean_mse_size (see ``mse_stats``) of each image's MSE list."""
    if not mse_lists:
        return {"multi_mse_share": math.nan, "mean_mse_size": math.nan}
    multi = [len(diverse_mses([(m, 0.0) for m in ms], 0)) >= 2 for ms in mse_lists]
    sizes = [float(np.mean([len(m) for m in ms])) for ms in mse_lists if ms]
    return {"multi_mse_share": float(np.mean(multi)), "mean_mse_size": float(np.mean(sizes)) if sizes else math.nan}

