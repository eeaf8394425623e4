"""Where a class's top unit (an unmixed channel, or a k-means prototype) peaks, against a known
cell: the planted-shortcut check of a prototype source."""

from __future__ import annotations

import numpy as np

__all__ = ["localisation_rate"]


def localisation_rate(unit_scores: np.ndarray, unit_maps: np.ndarray, labels: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(M,) per class c, the fraction of c's images in which c's top unit peaks in the image's
    target cell (NaN for a class with no image).

    unit_scores (N, K): each unit's contribution to the image's own class (its top unit is the
    argmax of the class mean); unit_maps (N, K, L): the unit's value at each of the L locations,
    -inf where the unit is absent (a k-means prototype not assigned there); an image where the
    top unit is absent everywhere counts as a miss. cells (N,): the flat target location."""
    scores, maps = np.asarray(unit_scores, dtype=np.float64), np.asarray(unit_maps, dtype=np.float64)
    labels, cells = np.asarray(labels).reshape(-1), np.asarray(cells).reshape(-1)
    n, k = scores.shape
    if maps.shape[:2] != (n, k) or labels.shape != (n,) or cells.shape != (n,):
        raise ValueError(f"unit_scores (N, K), unit_maps (N, K, L), labels (N,) and cells (N,) must agree, got "
                         f"{scores.shape}, {maps.shape}, {labels.shape}, {cells.shape}")
    m = int(labels.max()) + 1 if n else 0
    out = np.full(m, np.nan)
    for c in range(m):
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            continue
        top = int(np.argmax(scores[rows].mean(0)))
        peak = maps[rows, top]
        hit = (np.argmax(peak, axis=1) == cells[rows]) & np.isfinite(peak.max(axis=1))
        out[c] = float(hit.mean())
    return out
