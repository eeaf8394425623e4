"""Which prototypes look like shortcuts, from what a run holds (no ground truth, no human masks)."""

from __future__ import annotations

import warnings

import numpy as np

from .reliance import Reliance, load_reliance

__all__ = ["prototype_geometry", "suspect_prototypes", "run_suspects", "NO_RELIANCE"]

NO_RELIANCE = ("add RelianceMeasure() to I2XCallback(measures=[...]) or call "
               "lightning_i2x.reliance.reliance_of_run(run, model) first")


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


def run_suspects(run, explanation=None, **thresholds) -> list[int]:
    """``suspect_prototypes`` on what a run holds: its stored reliance (``RelianceMeasure`` or
    ``reliance_of_run``), its probe assignment and the GradCAM intensities of its last checkpoint.
    Never reads anything but the run (no ground truth). ``explanation`` is accepted for a
    signature shared with the explanation's readers and not used by this rule; ``thresholds``
    override ``suspect_prototypes``'s (``min_reliance=...``).

    Raises I2XRunError when the run has no prototypes, no stored reliance, or a reliance measured
    on earlier prototypes (they are refitted at every record), saying what to do."""
    from .run import I2XRunError

    if run.prototypes is None:
        raise I2XRunError(f"{run.path} has no prototypes yet (no checkpoint recorded): no suspects")
    rel = load_reliance(run)
    if rel is None:
        why = "holds no reliance" if run.attachment("reliance") is None else "holds a reliance measured on earlier prototypes"
        raise I2XRunError(f"{run.path} {why}: the suspect rule needs how much the model relies on each prototype; {NO_RELIANCE}")
    unknown = sorted(set(thresholds) - _RULE_OPTIONS)
    if unknown:
        raise ValueError(f"run_suspects got unknown threshold(s) {unknown}; suspect_prototypes takes {sorted(_RULE_OPTIONS)}")
    return suspect_prototypes(rel, run.assignment(), run.labels, intensities=run.intensities()[-1:],
                              num_prototypes=run.num_prototypes, **thresholds)


_RULE_OPTIONS = {"min_reliance", "min_images", "min_concentration", "min_border", "top_positions", "min_intensity_quantile"}
