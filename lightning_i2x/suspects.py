"""Which prototypes look like shortcuts, from what a run holds (no ground truth, no human masks)."""

from __future__ import annotations

import numpy as np

from .reliance import Reliance

__all__ = ["prototype_geometry", "suspect_prototypes"]


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
    labels: np.ndarray,
    *,
    intensities: np.ndarray | None = None,
    confidences: np.ndarray | None = None,
    num_prototypes: int | None = None,
    min_reliance: float = 0.05,
    min_images: int = 5,
    min_concentration: float = 0.8,
    min_border: float = 0.8,
    top_positions: int = 4,
) -> list[int]:
    """Prototypes that are likely shortcuts (placeholder, being calibrated)."""
    k_count = reliance.num_prototypes if num_prototypes is None else int(num_prototypes)
    geo = prototype_geometry(assignment, k_count, top_positions)
    out = []
    for k in range(k_count):
        if reliance.count[k] < min_images or not np.isfinite(reliance.reliance[k]):
            continue
        if reliance.reliance[k] >= min_reliance and (geo["concentration"][k] >= min_concentration or geo["border"][k] >= min_border):
            out.append(k)
    return out
