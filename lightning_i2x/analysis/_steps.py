"""The I2X analysis, Steps 3-6 of the method, as pure NumPy functions.

Nothing here knows about Lightning, torch or files: arrays in, arrays out, so every step can be
tested against planted ground truth. ``explain`` strings the steps together.
"""

from __future__ import annotations

import numpy as np

from ..options import SALIENCY_THRESHOLD

__all__ = [
    "prototype_counts",
    "prototype_intensity",
    "interval_deltas",
    "ridge",
    "learning_groups",
    "default_min_cluster_size",
    "salient_mask",
    "salient_presence",
    "interval_thresholds",
    "pair_flips",
    "MAX_CLUSTER_SAMPLES",
    "SALIENCY_THRESHOLD",
]


def _as_assignment(assignment: np.ndarray, num_prototypes: int) -> np.ndarray:
    a = np.asarray(assignment)
    if a.ndim != 2:
        raise ValueError(f"assignment must be (N, L) prototype ids, got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= num_prototypes):
        raise ValueError(f"assignment ids must lie in [0, {num_prototypes}), got [{a.min()}, {a.max()}]")
    return a.astype(np.int64, copy=False)


def prototype_counts(assignment: np.ndarray, num_prototypes: int) -> np.ndarray:
    """(N, K) number of locations of sample i assigned to prototype k."""
    a = _as_assignment(assignment, num_prototypes)
    n = a.shape[0]
    flat = (np.arange(n)[:, None] * num_prototypes + a).ravel()
    return np.bincount(flat, minlength=n * num_prototypes).reshape(n, num_prototypes)


def prototype_intensity(cams: np.ndarray, assignment: np.ndarray, num_prototypes: int) -> np.ndarray:
    """Step 3: mean saliency over the locations of each sample assigned to each prototype.

    cams: (..., N, L) saliency per location (any leading axes, e.g. checkpoints).
    assignment: (N, L) prototype id of every location, fixed across checkpoints.
    Returns (..., N, K), NaN where prototype k is absent from sample i. Non-finite saliency
    values count as 0 (no evidence).
    """
    a = _as_assignment(assignment, num_prototypes)
    cams = np.asarray(cams, dtype=np.float64)
    n, length = a.shape
    if cams.shape[-2:] != (n, length):
        raise ValueError(f"cams end in shape {cams.shape[-2:]}, assignment is {(n, length)}")
    lead = cams.shape[:-2]
    flat_cams = np.nan_to_num(cams.reshape(-1, n * length), nan=0.0, posinf=0.0, neginf=0.0)
    flat = (np.arange(n)[:, None] * num_prototypes + a).ravel()
    counts = np.bincount(flat, minlength=n * num_prototypes).astype(np.float64)
    out = np.empty((flat_cams.shape[0], n * num_prototypes))
    for t, row in enumerate(flat_cams):
        out[t] = np.bincount(flat, weights=row, minlength=n * num_prototypes)
    with np.errstate(invalid="ignore", divide="ignore"):
        out /= counts
    out[:, counts == 0] = np.nan
    return out.reshape(*lead, n, num_prototypes)


def interval_deltas(intensities: np.ndarray, confidences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dP[t] = P[t+1] - P[t] and dY[t] = Y[t+1] - Y[t]; an absent prototype's change is 0."""
    p = np.asarray(intensities, dtype=np.float64)
    y = np.asarray(confidences, dtype=np.float64)
    if p.ndim != 3 or y.ndim != 3 or p.shape[:2] != y.shape[:2]:
        raise ValueError(f"intensities (T, N, K) and confidences (T, N, M) must agree, got {p.shape}, {y.shape}")
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf and overflow: mapped to 0 below
        dp = np.nan_to_num(np.diff(p, axis=0), nan=0.0, posinf=0.0, neginf=0.0)
        dy = np.nan_to_num(np.diff(y, axis=0), nan=0.0, posinf=0.0, neginf=0.0)
    return dp, dy


_HUGE = 1e100


def ridge(dp: np.ndarray, dy: np.ndarray, lam: float = 1.0, center: bool = True) -> np.ndarray:
    """Step 5, closed form: beta = (dP^T dP + lam I)^-1 dP^T dY, a (K, M) matrix.

    Columns are centred (not scaled) when ``center``; lam = 0 falls back to least squares.
    Inputs beyond 1e100 are solved rescaled (the same beta), so dP^T dP cannot overflow.
    """
    x = np.asarray(dp, dtype=np.float64)
    y = np.asarray(dy, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"ridge needs dP (N, K) and dY (N, M) with the same N, got {x.shape}, {y.shape}")
    if lam < 0 or not np.isfinite(lam):
        raise ValueError(f"ridge lambda must be a finite number >= 0, got {lam}")
    if x.shape[0] == 0:
        return np.zeros((x.shape[1], y.shape[1]))
    if center:
        x = x - x.mean(axis=0)
        y = y - y.mean(axis=0)
    sx, sy = np.abs(x).max(initial=0.0), np.abs(y).max(initial=0.0)
    if sx > _HUGE or sy > _HUGE:  # beta(x, y, lam) = beta(x / sx, y / sy, lam / sx^2) * sy / sx
        sx, sy = max(sx, 1.0), max(sy, 1.0)
        return ridge(x / sx, y / sy, lam / sx**2, center=False) * (sy / sx)
    gram = x.T @ x + lam * np.eye(x.shape[1])
    if lam > 0:
        return np.linalg.solve(gram, x.T @ y)
    return np.linalg.lstsq(x, y, rcond=None)[0]


MAX_CLUSTER_SAMPLES = 2048
"""Above this many probe samples, Step 4 clusters a subset (see ``learning_groups``)."""


def default_min_cluster_size(n: int) -> int:
    """The method's default HDBSCAN ``min_cluster_size``: max(5, N // 50)."""
    return max(5, n // 50)


def learning_groups(
    dy_t: np.ndarray, min_cluster_size: int | None = None, max_cluster_samples: int | None = MAX_CLUSTER_SAMPLES, seed: int = 0
) -> np.ndarray:
    """Step 4: HDBSCAN over one interval's confidence changes; (N,) labels, -1 for noise.

    HDBSCAN costs O(N^2) in time, so above ``max_cluster_samples`` finite samples it clusters a
    seeded random subset of that size (with ``min_cluster_size`` scaled by the subset's share, but
    not below 5, the method's floor, below which HDBSCAN splits a dense group into fragments)
    and gives every other sample the label of its nearest clustered neighbour, noise included:
    the whole step then grows linearly in N. ``None`` clusters every sample.
    """
    dy_t = np.asarray(dy_t, dtype=np.float64)
    n = dy_t.shape[0]
    mcs = default_min_cluster_size(n) if min_cluster_size is None else int(min_cluster_size)
    if mcs < 2:
        raise ValueError(f"min_cluster_size must be >= 2, got {mcs}")
    if max_cluster_samples is not None and max_cluster_samples < 2:
        raise ValueError(f"max_cluster_samples must be >= 2 or None, got {max_cluster_samples}")
    labels = np.full(n, -1, dtype=np.int64)
    finite = np.flatnonzero(np.all(np.isfinite(dy_t), axis=1))
    if finite.size < max(mcs, 2):
        return labels
    from sklearn.cluster import HDBSCAN  # scikit-learn costs ~1 s to import: loaded at the first clustering
    from sklearn.neighbors import NearestNeighbors

    if max_cluster_samples is None or finite.size <= max_cluster_samples:
        labels[finite] = HDBSCAN(min_cluster_size=mcs, copy=True).fit_predict(dy_t[finite])
        return labels
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(finite, size=max_cluster_samples, replace=False))
    sample_mcs = max(min(mcs, 5), round(mcs * max_cluster_samples / finite.size))  # never below the method's floor
    sample_labels = HDBSCAN(min_cluster_size=sample_mcs, copy=True).fit_predict(dy_t[sample])
    nearest = NearestNeighbors(n_neighbors=1).fit(dy_t[sample]).kneighbors(dy_t[finite], return_distance=False)[:, 0]
    labels[finite] = sample_labels[nearest]
    return labels




def salient_mask(cams: np.ndarray, threshold: float = SALIENCY_THRESHOLD) -> np.ndarray:
    """(N, L) bool: location j of sample i lies in its salient region, i.e. its min-max normalised
    saliency is >= threshold. The one definition of "salient" used everywhere (presence, overlays,
    targeted fine-tuning), so the training set is judged as the probe was. ``cams`` is (N, ...)."""
    s = np.asarray(cams, dtype=np.float64)
    s = np.nan_to_num(s.reshape(s.shape[0], -1), nan=0.0, posinf=0.0, neginf=0.0)
    lo = s.min(axis=1, keepdims=True)
    s = (s - lo) / (1e-7 + (s - lo).max(axis=1, keepdims=True))
    return s >= threshold


def salient_presence(cam: np.ndarray, assignment: np.ndarray, num_prototypes: int, threshold: float = SALIENCY_THRESHOLD) -> np.ndarray:
    """(N, K) bool: prototype k holds at least one salient location of sample i (``salient_mask``),
    the method's "present in the salient region"."""
    a = _as_assignment(assignment, num_prototypes)
    hot = salient_mask(np.asarray(cam).reshape(a.shape), threshold)
    n = a.shape[0]
    flat = (np.arange(n)[:, None] * num_prototypes + a).ravel()
    hits = np.bincount(flat, weights=hot.ravel().astype(np.float64), minlength=n * num_prototypes)
    return hits.reshape(n, num_prototypes) > 0


def interval_thresholds(beta: np.ndarray, tau: float | str = "auto", tau_scale: float = 1.0) -> np.ndarray:
    """The significance threshold of each interval, (T-1,).

    ``tau="auto"``: tau_scale x the standard deviation of all coefficients of the run, so the
    threshold follows the scale of beta (which depends on the model and the data) while an
    interval in which little happened yields no significant entries.
    A number: that absolute threshold.
    """
    beta = np.asarray(beta, dtype=np.float64)
    if isinstance(tau, str):
        if tau != "auto":
            raise ValueError(f"tau must be 'auto' or a number >= 0, got {tau!r}")
        if beta.shape[0] == 0:
            return np.zeros(0)
        return np.full(beta.shape[0], tau_scale * beta.std())
    if not np.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be 'auto' or a number >= 0, got {tau!r}")
    return np.full(beta.shape[0], float(tau))


def pair_flips(beta: np.ndarray, thresholds: np.ndarray, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the class pair (a, b), per prototype: the number of sign flips of
    ``beta[t][k, a] - beta[t][k, b]`` across the intervals where its magnitude exceeds the threshold,
    the mean magnitude over those intervals, and the interval of the last flip (-1 if none).
    Returns three (K,) arrays.
    """
    s = beta[:, :, a] - beta[:, :, b]  # (T-1, K)
    significant = np.abs(s) > thresholds[:, None]
    sign = np.where(significant, np.sign(s), 0.0)
    num_k = s.shape[1]
    flips = np.zeros(num_k, dtype=np.int64)
    last_flip = np.full(num_k, -1, dtype=np.int64)
    prev = np.zeros(num_k)
    for t in range(s.shape[0]):
        changed = (sign[t] != 0) & (prev != 0) & (sign[t] != prev)
        flips += changed
        last_flip[changed] = t
        prev = np.where(sign[t] != 0, sign[t], prev)
    hits = significant.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        magnitude = np.where(hits > 0, (np.abs(s) * significant).sum(axis=0) / np.maximum(hits, 1), 0.0)
    return flips, magnitude, last_flip
