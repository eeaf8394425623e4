"""Rare artifacts get found: suspects grown from the locations the model relies on, for a shortcut
that k-means drowns (a tag on a fraction of one class's images gets no prototype of its own).

``refine_suspects`` hides each probe location, and each 2 x 2 block of them, in turn (the reliance
measure's fills, default the content-removing ``"resample"``), keeps the locations in a block whose
drop of the true class's probability exceeds that image's average block's by
``min_reliance_per_location``, groups their target-layer features (``analysis.relied_clusters``)
into refined prototypes, measures those with ``prototype_reliance`` and judges them with
``analysis.suspect_report``: the same rule, on prototypes made where the reliance is.

Cost: ``N (1 + h w + (h - 1)(w - 1))`` forwards for the drops (``N (1 + h w)`` with
``windows=(1,)``), then one reliance measure over the refined prototypes
(``N + P (1 + n_random)``, every other location pooled into one "rest" id whose reliance is
measured but not judged); no backward.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .._core import check_choice, check_int
from .._model import ForwardFn, model_device
from ..analysis import SUSPECT_RULE_DEFAULTS, Reliance, ReliedClusters, SuspectReport, relied_clusters, suspect_report
from ..errors import I2XRunError
from ..perturb import FILLS, LatentSwap, apply_mask, default_sigma, fill_values, resample_donors, target_probabilities
from ._reliance import _run_layer, prototype_reliance

__all__ = ["REFINED_RULE_DEFAULTS", "RefinedSuspects", "location_drops", "refine_suspects", "refine_suspects_of_run"]

REFINED_RULE_DEFAULTS: dict[str, object] = {**SUSPECT_RULE_DEFAULTS, "min_images": 10, "min_localisation": 0.9}
"""The suspect rule's thresholds for refined prototypes: the rule's own but for two, chosen on the
benchmark family's calibration cells (``benchmarks/shortcut_refine.py``): a refined prototype must
be in at least 10 probe images, and at least 0.9 of its drop must be more than hiding as much of
the image anywhere costs. With the rule's 5 and 0.5 it named refined suspects on most clean models."""


@dataclasses.dataclass(frozen=True)
class RefinedSuspects:
    """What ``refine_suspects`` found.

    clusters: the refined prototypes (``analysis.ReliedClusters``).
    assignment: (N, h, w) 0 for the rest, ``1 + j`` for refined prototype j's locations.
    reliance: the reliance over that assignment (id 0 is the rest); None when no location is
        relied on (nothing was measured).
    report: ``suspect_report`` over it (its ids are assignment ids), or a "none" saying why.
    suspects: the refined prototypes (0-based, into ``clusters``) the rule flags, most reliant first.
    drops: (N, h, w) each location's score of ``location_drops`` (its own drop beyond its image's
        mean location's, with ``windows=(1,)``).
    """

    clusters: ReliedClusters
    assignment: np.ndarray
    reliance: Reliance | None
    report: SuspectReport
    suspects: tuple[int, ...]
    drops: np.ndarray

    def locations(self, suspect: int) -> np.ndarray:
        """(N, h, w) bool, the probe locations of refined prototype ``suspect``."""
        return self.assignment == 1 + int(suspect)


def windows_of(h: int, w: int, size: int) -> np.ndarray:
    """(n, h, w) bool, every ``size`` x ``size`` block of locations of an (h, w) map (stride 1)."""
    out = np.zeros(((h - size + 1) * (w - size + 1), h, w), dtype=bool)
    for j, (r, c) in enumerate((r, c) for r in range(h - size + 1) for c in range(w - size + 1)):
        out[j, r : r + size, c : c + size] = True
    return out


def location_drops(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, labels, *, fill: str = "resample",
                   seed: int = 0, batch_size: int = 256, windows: tuple[int, ...] = (1,),
                   forward_fn: ForwardFn | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """(N, h, w) how much each location's removal costs the true class's probability, and the
    (N, d, h, w) features at ``layer`` of the clean pass.

    Every ``windows`` size s hides each s x s block of locations in turn (``fill`` in the pixels,
    donors ``resample_donors(labels, seed)``); a block's drop minus the mean over that image's
    blocks of its size is its score, and a location's is the highest score of a block that holds
    it. ``(1,)``: one location at a time; ``(1, 2)`` also sees a shortcut whose evidence the model
    reads redundantly from two neighbouring locations (a tag across a cell border), at about 2x
    the forwards."""
    sizes = tuple(int(v) for v in windows)
    if not sizes or any(v < 1 for v in sizes):
        raise ValueError(f"windows must be block sizes >= 1, got {windows!r}")
    y = torch.as_tensor(labels).reshape(-1).long()
    device = images.device
    with LatentSwap(layer) as cap:
        base = target_probabilities(model, images, y.to(device), batch_size=batch_size, forward_fn=forward_fn).double().cpu().numpy()
        feats = torch.cat(cap.captured) if cap.captured else None
    if feats is None or feats.shape[0] != images.shape[0]:
        raise ValueError(f"the layer gave {None if feats is None else tuple(feats.shape)}; refining needs its (N, d, h, w) maps")
    n, (h, w), (big_h, big_w) = images.shape[0], feats.shape[2:], images.shape[2:]
    if max(sizes) > min(h, w):
        raise ValueError(f"windows {sizes} larger than the {h}x{w} map")
    gen = torch.Generator(device=device).manual_seed(int(seed))
    values = fill_values(images, fill, sigma=default_sigma((big_h, big_w), (h, w)), generator=gen, donors=resample_donors(y, seed))
    rows = torch.as_tensor((np.arange(big_h) * h) // big_h, device=device)
    cols = torch.as_tensor((np.arange(big_w) * w) // big_w, device=device)
    score = np.full((n, h, w), -np.inf)
    for size in sizes:
        blocks = windows_of(h, w, size)
        masks = torch.as_tensor(blocks, device=device)
        nb = blocks.shape[0]
        image_of = np.repeat(np.arange(n), nb)
        probs = np.empty(n * nb, dtype=np.float64)
        for s in range(0, image_of.size, batch_size):
            job = np.arange(s, min(s + batch_size, image_of.size))
            idx = torch.as_tensor(image_of[job], device=device)
            pm = masks[torch.as_tensor(job % nb, device=device)][:, rows][:, :, cols]
            x = apply_mask(images[idx], pm, values[idx])
            probs[job] = target_probabilities(model, x, y.to(device)[idx], batch_size=batch_size,
                                              forward_fn=forward_fn).double().cpu().numpy()
        drop = (base[image_of] - probs).reshape(n, nb)
        drop -= drop.mean(axis=1, keepdims=True)
        for j, block in enumerate(blocks):
            score[:, block] = np.maximum(score[:, block], drop[:, j : j + 1])
    return score, feats


def refine_suspects(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, labels, *, fill: str = "resample",
                    seed: int = 0, n_random: int = 4, batch_size: int = 256, scale: float = 0.5, max_locations: int = 2000,
                    max_images_per_prototype: int | None = None, num_classes: int | None = None,
                    windows: tuple[int, ...] = (1, 2), forward_fn: ForwardFn | None = None, **thresholds) -> RefinedSuspects:
    """Suspects among prototypes grown from the most relied-on locations (module docstring).

    Args:
        model, layer: the classifier and its target layer (a module whose output is (B, d, h, w)).
        images, labels: the (N, C, H, W) probe and its (N,) true classes.
        fill: the pixel fill that hides a location (default the content-removing ``"resample"``).
        seed: seeds the donors, the noise and the reliance's random locations.
        n_random, batch_size, max_images_per_prototype, num_classes, forward_fn: as
            ``prototype_reliance``.
        scale, max_locations: as ``analysis.relied_clusters``.
        windows: the block sizes of ``location_drops`` (default single locations and 2 x 2 blocks:
            one location at a time misses a tag across a cell border that the model reads from
            either half, ``tests/test_rare_artifacts.py``).
        **thresholds: the suspect rule's, by name (defaults ``REFINED_RULE_DEFAULTS``);
            ``min_reliance_per_location`` also picks the relied-on locations.

    Returns a ``RefinedSuspects``; with no location relied on, no refined prototype and no suspect.
    """
    check_choice("refine_suspects", "fill", fill, FILLS)
    check_int("refine_suspects", "n_random", n_random)
    check_int("refine_suspects", "max_locations", max_locations)
    unknown = sorted(set(thresholds) - set(SUSPECT_RULE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown suspect-rule threshold(s) {unknown}; the rule takes {sorted(SUSPECT_RULE_DEFAULTS)}")
    rule = {**REFINED_RULE_DEFAULTS, **thresholds}
    min_drop = float(rule["min_reliance_per_location"])
    drops, feats = location_drops(model, layer, images, labels, fill=fill, seed=seed, batch_size=batch_size, windows=windows,
                                  forward_fn=forward_fn)
    clusters = relied_clusters(feats.permute(0, 2, 3, 1).float().cpu().numpy(), drops, min_drop=min_drop,
                               max_locations=max_locations, scale=scale)
    assignment = np.zeros(drops.shape, dtype=np.int64)
    if clusters.count == 0:  # nothing to measure: say so rather than judge the pooled rest
        note = (f"no probe location or block of them costs the true class {min_drop:g} beyond its image's average one: "
                "nothing to refine")
        return RefinedSuspects(clusters, assignment, None, SuspectReport((), "none", (), note), (), drops)
    for j in range(clusters.count - 1, -1, -1):  # where groups overlap, the one grown from more locations wins
        assignment[clusters.members[j]] = 1 + j
    rel = prototype_reliance(model, images, labels, assignment, 1 + clusters.count, fill=fill, n_random=n_random, seed=seed,
                             batch_size=batch_size, max_images_per_prototype=max_images_per_prototype, num_classes=num_classes,
                             forward_fn=forward_fn)
    report = suspect_report(rel, assignment, np.asarray(torch.as_tensor(labels).cpu()), **rule)
    suspects = tuple(k - 1 for k in report.suspects if k >= 1)
    return RefinedSuspects(clusters, assignment, rel, report, suspects, drops)


def refine_suspects_of_run(run, model: torch.nn.Module, *, layer: torch.nn.Module | str | None = None,
                           **kwargs) -> RefinedSuspects:
    """``refine_suspects`` over the run's own probe images and labels, at ``layer`` (a module or
    its name; default the run's recorded target layer). ``kwargs`` as ``refine_suspects``. Raises
    I2XRunError when the run holds no probe images."""
    if run.images is None:
        raise I2XRunError(f"{run.path} holds no probe images (recorded with store_images=False or a probe over 64 MiB): "
                          "refining hides parts of those images; record the run with ProbePassOptions(store_images=True)")
    module = _run_layer(run, model, layer)
    images = torch.as_tensor(np.asarray(run.images), dtype=torch.float32, device=model_device(model))
    return refine_suspects(model, module, images, torch.as_tensor(np.asarray(run.labels)), num_classes=run.num_classes, **kwargs)
