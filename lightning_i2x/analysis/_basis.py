"""The centred subspace of prototypes at the target layer (pure NumPy): for each prototype, the
directions from the other locations' mean feature to its locations (its centroid minus the rest's
mean first, then the next singular directions of those differences: a swatch drawn in ten shades
spans several), all orthonormalised into one (d, r) basis. The latent repair (RR-ClArC, P-ClArC)
and the reliance measure's projection (``intervention="project"``) take it from here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LatentBasis", "suspect_basis"]


@dataclass
class LatentBasis:
    """The suspects' centred subspace at the target layer.

    basis: (d, r) orthonormal columns; reference: (d,) the mean feature of the locations not
    assigned to a targeted prototype (where ``project_out`` puts the removed component);
    prototypes: the targeted ids; directions: {prototype: directions it contributed};
    locations: {prototype: locations of the sample assigned to it}; num_locations: all locations
    sampled."""

    basis: np.ndarray
    reference: np.ndarray
    prototypes: tuple[int, ...]
    directions: dict[int, int] = field(default_factory=dict)
    locations: dict[int, int] = field(default_factory=dict)
    num_locations: int = 0

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"basis": self.basis.astype(np.float32), "reference": self.reference.astype(np.float32),
                "prototypes": np.asarray(self.prototypes, dtype=np.int64)}


def suspect_basis(features: np.ndarray, assignment: np.ndarray, prototypes: Sequence[int], *, directions: int = 3,
                  min_share: float = 0.05, tol: float = 1e-6) -> LatentBasis:
    """The orthonormal basis of the targeted prototypes' directions in feature space.

    Args:
        features: (L, d) feature vectors of sampled locations at the target layer.
        assignment: (L,) the prototype of each location.
        prototypes: the targeted prototype ids.
        directions: at most this many directions per prototype: the top right singular vectors of
            (its locations' features minus the other locations' mean), whose first is about the
            centroid minus the rest's mean.
        min_share: a further direction is kept only when its singular value squared is at least
            this share of the prototype's total (the first is always kept).
        tol: directions left with less than this norm after orthogonalisation are dropped.

    Returns:
        A ``LatentBasis`` (rank 0 when no location is assigned to a targeted prototype, or every
        location is).
    """
    x = np.asarray(features, dtype=np.float64)
    a = np.asarray(assignment).reshape(-1)
    if x.ndim != 2 or x.shape[0] != a.shape[0]:
        raise ValueError(f"features must be (L, d) with one assignment per row, got {x.shape} and {a.shape}")
    if directions < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    protos = tuple(int(k) for k in prototypes)
    d = x.shape[1]
    target = np.isin(a, np.asarray(protos, dtype=a.dtype)) if protos else np.zeros(a.shape, bool)
    rest = ~target
    reference = x[rest].mean(axis=0) if rest.any() else np.zeros(d)
    cols, counts, dirs = [], {}, {}
    for k in protos:
        own = a == k
        counts[k] = int(own.sum())
        dirs[k] = 0
        if not own.any() or not rest.any():
            continue
        diff = x[own] - reference
        _, s, vt = np.linalg.svd(diff, full_matrices=False)
        total = float((s**2).sum())
        if total <= 0:
            continue
        # orient each singular vector along the prototype's mean difference (a sign convention only)
        mean_diff = diff.mean(axis=0)
        for j in range(min(directions, vt.shape[0])):
            if j > 0 and s[j] ** 2 < min_share * total:
                break
            v = vt[j] * (1.0 if float(vt[j] @ mean_diff) >= 0 else -1.0)
            cols.append(v)
            dirs[k] += 1
    basis = np.zeros((d, 0))
    if cols:
        kept = []
        for v in cols:  # Gram-Schmidt in the order given: each prototype's main direction first
            w = v - sum((q @ v) * q for q in kept) if kept else v.copy()
            norm = float(np.linalg.norm(w))
            if norm > tol:
                kept.append(w / norm)
        if kept:
            basis = np.stack(kept, axis=1)
    return LatentBasis(basis=basis.astype(np.float32), reference=reference.astype(np.float32), prototypes=protos,
                       directions=dirs, locations=counts, num_locations=int(a.size))
