"""Which prototypes look like shortcuts, from what a run holds (no ground truth, no human masks)."""

from __future__ import annotations

import warnings

import numpy as np

from ._reliance import Reliance

__all__ = ["prototype_geometry", "suspect_prototypes", "SUSPECT_RULE_OPTIONS"]

SUSPECT_RULE_OPTIONS = frozenset({"min_reliance", "min_images", "min_concentration", "min_border", "top_positions", "min_intensity_quantile"})
"""The thresholds ``suspect_prototypes`` takes, by name."""


def prototype_geometry(assignment: np.ndarray, num_prototypes: int, top_positions: int = 4, border: int = 1) -> dict[str, np.ndarray]:
    """Where each prototype sits on the (h, w) map, over the (N, h, w) ``assignment``:

    concentration: share of its locations at its ``top_positions`` most used map positions
        (1 = always at the same few places, as a swatch in four corners; ``top_positions / (h w)``
        for a prototype spread evenly);
    border: share of its locations within ``border`` cells of the map's edge;
    locations: total number of its locations.
    """
    a = np.asarray(assignment)
    if a.ndim != 3:
        raise ValueError(f"assignment must be (N, h, w), got shape {a.shape}")
    n, h, w = a.shape
    pos = np.zeros((num_prototypes, h * w), dtype=np.int64)
    np.add.at(pos, (a.reshape(n, -1).ravel(), np.tile(np.arange(h * w), n)), 1)
    total = pos.sum(1)
    top = np.sort(pos, axis=1)[:, ::-1][:, :top_positions].sum(1)
    ring = np.zeros((h, w), dtype=bool)
    ring[:border], ring[-border:], ring[:, :border], ring[:, -border:] = True, True, True, True
    with np.errstate(invalid="ignore", divide="ignore"):
        conc = np.where(total > 0, top / np.maximum(total, 1), np.nan)
        bord = np.where(total > 0, pos[:, ring.ravel()].sum(1) / np.maximum(total, 1), np.nan)
    return {"concentration": conc, "border": bord, "locations": total}


def suspect_prototypes(
    reliance: Reliance,
    assignment: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    intensities: np.ndarray | None = None,
    confidences: np.ndarray | None = None,
    num_prototypes: int | None = None,
    min_reliance: float = 0.02,
    min_images: int = 5,
    min_concentration: float = 0.75,
    min_border: float = 0.6,
    top_positions: int = 4,
    min_intensity_quantile: float = 0.5,
) -> list[int]:
    """Prototypes that are likely shortcuts, without ground truth: the model leans on them and they
    sit at the same few places at the image's edge, where the object rarely is.

    k is a suspect when all of these hold (thresholds are parameters; defaults calibrated on
    Decoy MNIST / Decoy Fashion-MNIST against their clean counterparts, see
    ``benchmarks/shortcut_calibrate.py``):

    1. evidence: k is in at least ``min_images`` probe images (``reliance.count``);
    2. reliance: hiding k costs the true class at least ``min_reliance`` more probability than
       hiding as many random locations (``reliance.reliance``): the model uses it;
    3. fixed position: at least ``min_concentration`` of k's locations fall on its
       ``top_positions`` most used map positions (``prototype_geometry``): a real part of an
       object moves with the object, a planted mark (swatch, watermark, tag) does not;
    4. edge: at least ``min_border`` of its locations lie in the map's outer ring (0.6: on a Decoy
       MNIST model with a flatten head, the swatch prototype also took 35 % of its locations from
       interior cells that look alike);
    5. salient (when ``intensities`` (T, N, K) are given): its mean GradCAM intensity at the last
       checkpoint is at least the ``min_intensity_quantile`` quantile of the prototypes' (a
       background corner the model ignores is not salient).

    ``labels`` and ``confidences`` are accepted for rules that use class sharing or learning
    history; this one does not: on the calibration runs neither the number of classes sharing a
    prototype (a swatch splits by shade into class-specific prototypes) nor the confidence history
    told shortcut prototypes from the others. Returns the suspect ids, most reliant first.
    """
    k_count = reliance.num_prototypes if num_prototypes is None else int(num_prototypes)
    a = np.asarray(assignment)
    if a.ndim != 3:
        raise ValueError(f"assignment must be (N, h, w), got shape {a.shape}")
    if reliance.num_prototypes != k_count:
        raise ValueError(f"reliance has {reliance.num_prototypes} prototypes, num_prototypes={k_count}")
    if a.size and (a.min() < 0 or a.max() >= k_count):
        raise ValueError(f"assignment ids must lie in [0, {k_count})")
    if labels is not None and np.asarray(labels).reshape(-1).shape[0] != a.shape[0]:
        raise ValueError(f"{np.asarray(labels).size} labels for {a.shape[0]} assignment rows")
    geo = prototype_geometry(a, k_count, top_positions)
    salient = np.ones(k_count, dtype=bool)
    if intensities is not None:
        it = np.asarray(intensities, dtype=np.float64)
        if it.ndim != 3 or it.shape[1:] != (a.shape[0], k_count):
            raise ValueError(f"intensities must be (T, {a.shape[0]}, {k_count}), got {it.shape}")
        if it.shape[0]:
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                last = np.nanmean(it[-1], axis=0)
            cut = np.nanquantile(last, min_intensity_quantile) if np.isfinite(last).any() else -np.inf
            salient = np.nan_to_num(last, nan=-np.inf) >= cut
    rel = np.nan_to_num(reliance.reliance, nan=-np.inf)
    ok = (
        (reliance.count >= min_images) & (rel >= min_reliance) & salient
        & (np.nan_to_num(geo["concentration"]) >= min_concentration) & (np.nan_to_num(geo["border"]) >= min_border)
    )
    return [int(k) for k in np.argsort(-rel, kind="stable") if ok[k]]
