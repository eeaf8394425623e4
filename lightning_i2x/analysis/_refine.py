"""Rare artifacts that k-means drowns: regroup the probe's locations by where the model's reliance
is, not by how many locations look alike (pure NumPy and SciPy).

A tag on a fifth of one class's images covers a few hundredths of a percent of the probe's
locations; among K k-means clusters it gets no prototype of its own and is merged into a large one
(background, a stroke), whose reliance, averaged over every image that holds it, is diluted below
any threshold. ``relied_clusters`` starts from the other end: the locations whose own removal costs
the model most (``drops``, one location hidden at a time, beyond that image's average location),
grouped by their features with average-linkage clustering cut at a distance relative to the
features' spread, each group becoming a refined prototype: every probe location within that
distance of its centroid. The reliance measure and the suspect rule then judge the refined
prototypes as they judge the k-means ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

__all__ = ["ReliedClusters", "relied_clusters"]


@dataclasses.dataclass(frozen=True)
class ReliedClusters:
    """Refined prototypes grown from the most relied-on locations.

    centroids: (q, d) each refined prototype's centre in feature space.
    members: (q, N, h, w) bool, the probe locations of each (within ``radius`` of its centroid).
    seeds: (q,) how many relied-on locations each grew from.
    radius: the merge and membership distance (``scale`` x the features' RMS spread).
    selected: (N, h, w) bool, the relied-on locations the groups were made of.
    """

    centroids: np.ndarray
    members: np.ndarray
    seeds: np.ndarray
    radius: float
    selected: np.ndarray

    @property
    def count(self) -> int:
        return int(self.centroids.shape[0])


def relied_clusters(features: np.ndarray, drops: np.ndarray, *, min_drop: float = 0.1, max_locations: int = 2000,
                    scale: float = 0.5, min_seeds: int = 2) -> ReliedClusters:
    """Group the most relied-on probe locations into refined prototypes.

    Args:
        features: (N, h, w, d) the probe's features at the target layer.
        drops: (N, h, w) each location's own drop of the true class's probability when it alone is
            hidden, minus the mean over that image's locations (the single-location random control).
        min_drop: a location is relied on when its drop is at least this (the suspect rule's
            ``min_reliance_per_location``: one location of a shortcut carries the decision).
        max_locations: at most this many relied-on locations, the largest drops (the linkage is
            quadratic in them).
        scale: the merge and membership distance is this times the RMS distance of all the
            probe's features to their mean (a scale of the data, not of the clusters).
        min_seeds: a group needs at least this many relied-on locations (one alone is noise).

    Returns a ``ReliedClusters`` (possibly with no group: nothing is relied on per location).
    Raises ValueError on mismatched shapes or bad settings.
    """
    f = np.asarray(features, dtype=np.float64)
    d = np.asarray(drops, dtype=np.float64)
    if f.ndim != 4 or d.shape != f.shape[:3]:
        raise ValueError(f"features must be (N, h, w, d) and drops (N, h, w), got {f.shape} and {d.shape}")
    if not (scale > 0 and max_locations >= 1 and min_seeds >= 1):
        raise ValueError(f"scale must be > 0, max_locations and min_seeds >= 1; got {scale}, {max_locations}, {min_seeds}")
    flat = f.reshape(-1, f.shape[-1])
    spread = float(np.sqrt(((flat - flat.mean(axis=0)) ** 2).sum(axis=1).mean())) if flat.size else 0.0
    radius = scale * spread
    score = np.nan_to_num(d.reshape(-1), nan=-np.inf)
    chosen = np.flatnonzero(score >= min_drop)
    chosen = chosen[np.argsort(-score[chosen], kind="stable")[:max_locations]]
    selected = np.zeros(score.shape, dtype=bool)
    selected[chosen] = True
    empty = ReliedClusters(np.zeros((0, f.shape[-1])), np.zeros((0, *d.shape), bool), np.zeros(0, np.int64), radius,
                             selected.reshape(d.shape))
    if chosen.size < min_seeds or radius <= 0:
        return empty
    pts = flat[chosen]
    groups = (np.ones(1, dtype=np.int64) if pts.shape[0] == 1
              else fcluster(linkage(pts, method="average"), t=radius, criterion="distance"))
    centroids, members, seeds = [], [], []
    for g in np.unique(groups):
        own = pts[groups == g]
        if own.shape[0] < min_seeds:
            continue
        c = own.mean(axis=0)
        centroids.append(c)
        members.append((np.linalg.norm(flat - c, axis=1) <= radius).reshape(d.shape))
        seeds.append(own.shape[0])
    if not centroids:
        return empty
    order = np.argsort(-np.asarray(seeds), kind="stable")
    return ReliedClusters(np.stack(centroids)[order], np.stack(members)[order], np.asarray(seeds, np.int64)[order], radius,
                            selected.reshape(d.shape))
