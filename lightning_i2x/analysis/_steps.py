"""The I2X analysis, Steps 3-6 of the method, as pure NumPy functions.

Nothing here knows about Lightning, torch or files: arrays in, arrays out, so every step can be
tested against planted ground truth. ``explain`` strings the steps together.
"""

from __future__ import annotations

import numpy as np

from ..options import SALIENCY_THRESHOLD, SIGNIFICANCE_METHODS, UNCERTAIN_RULES

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
    "pair_reversals",
    "coefficient_signs",
    "interval_signs",
    "bootstrap_counts",
    "ridge_intervals",
    "UNCERTAIN_RULES",
    "SIGNIFICANCE_METHODS",
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


def pair_flips(
    beta: np.ndarray, thresholds: np.ndarray, a: int | np.ndarray, b: int | np.ndarray, difference_signs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The difference rule of "uncertain" for the class pair (a, b) (or index arrays of P pairs:
    every pair at once, each result and ``difference_signs`` with a trailing P axis), per prototype: the number of
    sign flips of ``beta[t][k, a] - beta[t][k, b]`` across the intervals where it is significant,
    the mean magnitude over those intervals, and the interval of the last flip (-1 if none).
    Significant: its magnitude exceeds the interval's threshold, or, when ``difference_signs``
    (T-1, K) is given (the significant sign of the difference, e.g. ``interval_signs`` of
    ``ridge_intervals`` on ``dy_a - dy_b``), where that sign is nonzero.
    Returns three (K,) arrays.
    """
    s = beta[:, :, a] - beta[:, :, b]  # (T-1, K) or (T-1, K, P)
    if difference_signs is None:
        significant = np.abs(s) > np.asarray(thresholds).reshape((-1,) + (1,) * (s.ndim - 1))
        sign = np.where(significant, np.sign(s), 0.0)
    else:
        sign = np.asarray(difference_signs, dtype=np.float64)
        significant = sign != 0
    flips, last_flip = _sign_changes(sign)
    hits = significant.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        magnitude = np.where(hits > 0, (np.abs(s) * significant).sum(axis=0) / np.maximum(hits, 1), 0.0)
    return flips, magnitude, last_flip


def coefficient_signs(beta: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The significant sign of every coefficient under a threshold per interval: +1 where
    ``beta[t] > thresholds[t]``, -1 where ``beta[t] < -thresholds[t]``, 0 otherwise; int8, beta's shape."""
    beta = np.asarray(beta, dtype=np.float64)
    th = np.asarray(thresholds, dtype=np.float64).reshape((-1,) + (1,) * (beta.ndim - 1))
    return (np.where(beta > th, 1, 0) - np.where(beta < -th, 1, 0)).astype(np.int8)


def interval_signs(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """+1 where an interval lies above 0 (``lower > 0``), -1 where below (``upper < 0``), 0 where it
    holds 0; int8."""
    lower, upper = np.asarray(lower), np.asarray(upper)
    return (np.where(lower > 0, 1, 0) - np.where(upper < 0, 1, 0)).astype(np.int8)


def bootstrap_counts(n: int, samples: int = 200, seed: int = 0) -> np.ndarray:
    """(samples, n) how often each of n samples is drawn in each resample with replacement (a
    multinomial draw of n from n equal shares, seeded): resample b is
    ``np.repeat(np.arange(n), counts[b])``."""
    if n < 1 or samples < 1:
        raise ValueError(f"bootstrap needs n >= 1 samples and >= 1 resamples, got n={n}, samples={samples}")
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=samples)


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def _solve_batched(gram: np.ndarray, rhs: np.ndarray, lam: float) -> np.ndarray:
    if lam > 0:
        return np.linalg.solve(gram, rhs)
    return np.linalg.pinv(gram, hermitian=True) @ rhs  # lam = 0: the minimum-norm least squares


def ridge_intervals(
    dp: np.ndarray,
    dy: np.ndarray,
    lam: float = 1.0,
    method: str = "bootstrap",
    level: float = 0.05,
    samples: int = 200,
    seed: int = 0,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (1 - ``level``) interval of every coefficient of ``ridge(dp, dy, lam)`` (columns
    centred), as two (K, Q) arrays (lower, upper). A linear combination of classes is a column of
    ``dy @ C``: the interval of ``beta[:, a] - beta[:, b]`` is that of the response ``dy_a - dy_b``.

    ``"bootstrap"``: ``samples`` resamples of the N rows with replacement (``bootstrap_counts(N,
    samples, seed)``, or the given ``counts``), the ridge refitted on each (centred within the
    resample, exactly ``ridge(dp[idx], dy[idx], lam)``), and the percentile interval: the
    ``level/2`` and ``1 - level/2`` quantiles (``np.quantile``, linear) of the B coefficients.
    Vectorised: the B weighted Gram matrices are one (B, N) @ (N, K^2) product and the B
    right-hand sides one (B, N) @ (N, K Q), then B batched K x K solves: O(B N K (K + Q)) time and
    O(N K (K + Q) + B K (K + Q)) memory. For K=32, M=10, N=3000 and B=200 that is about 2.5 GFLOP
    per interval (a fraction of a second; about 2-5 s for 25 intervals on two cores).

    ``"stderr"``: the closed-form (heteroscedasticity-consistent, HC0 "sandwich") standard error
    of the ridge estimate, with ``H = (X^T X + lam I)^-1 X^T`` (K, N) and residuals ``E = Y - X beta``
    of the centred X, Y: ``se[k, q] = sqrt(sum_i H[k, i]^2 E[i, q]^2)``, and the normal interval
    ``beta +- z_(1 - level/2) se``. O(N K (K + Q)) per interval, as cheap as the ridge. It holds
    the ridge's shrinkage bias (towards 0), so it is conservative for large lam.

    lam = 0 uses the pseudo-inverse (the minimum-norm least squares). Inputs beyond 1e100 are
    rescaled first (the same intervals).
    """
    x = np.asarray(dp, dtype=np.float64)
    y = np.asarray(dy, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"ridge_intervals needs dP (N, K) and dY (N, Q) with the same N, got {x.shape}, {y.shape}")
    if lam < 0 or not np.isfinite(lam):
        raise ValueError(f"ridge lambda must be a finite number >= 0, got {lam}")
    if method not in ("bootstrap", "stderr"):
        raise ValueError(f"ridge_intervals method must be one of ('bootstrap', 'stderr'), got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"ridge_intervals level must lie in (0, 1), got {level}")
    n, k = x.shape
    q = y.shape[1]
    if n == 0:
        return np.zeros((k, q)), np.zeros((k, q))
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    sx, sy = np.abs(x).max(initial=0.0), np.abs(y).max(initial=0.0)
    if sx > _HUGE or sy > _HUGE:
        sx, sy = max(sx, 1.0), max(sy, 1.0)
        lo, hi = ridge_intervals(x / sx, y / sy, lam / sx**2, method, level, samples, seed, counts)
        return lo * (sy / sx), hi * (sy / sx)
    eye = lam * np.eye(k)
    if method == "stderr":
        gram = x.T @ x + eye
        h = np.linalg.solve(gram, x.T) if lam > 0 else np.linalg.pinv(gram, hermitian=True) @ x.T  # (K, N)
        beta = h @ y
        resid = y - x @ beta
        se = np.sqrt((h * h) @ (resid * resid))
        z = _normal_quantile(1 - level / 2)
        return beta - z * se, beta + z * se
    w = bootstrap_counts(n, samples, seed) if counts is None else np.asarray(counts, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"bootstrap counts must be (B, {n}), got {w.shape}")
    w = w.astype(np.float64, copy=False)
    total = w.sum(axis=1)  # N for every multinomial resample
    mx = (w @ x) / total[:, None]  # (B, K) the resample's column means
    my = (w @ y) / total[:, None]  # (B, Q)
    xx = (x[:, :, None] * x[:, None, :]).reshape(n, k * k)
    xy = (x[:, :, None] * y[:, None, :]).reshape(n, k * q)
    gram = (w @ xx).reshape(-1, k, k) - total[:, None, None] * mx[:, :, None] * mx[:, None, :] + eye
    rhs = (w @ xy).reshape(-1, k, q) - total[:, None, None] * mx[:, :, None] * my[:, None, :]
    betas = _solve_batched(gram, rhs, lam)  # (B, K, Q)
    lo, hi = np.quantile(betas, [level / 2, 1 - level / 2], axis=0)
    return lo, hi


def _sign_changes(sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of a (T-1, ...) array of -1/0/+1: how often a nonzero value differs from the last
    nonzero value before it (zeros skipped), and the row of the last such change (-1: none)."""
    changes = np.zeros(sign.shape[1:], dtype=np.int64)
    last = np.full(sign.shape[1:], -1, dtype=np.int64)
    prev = np.zeros(sign.shape[1:])
    for t in range(sign.shape[0]):
        changed = (sign[t] != 0) & (prev != 0) & (sign[t] != prev)
        changes += changed
        last[changed] = t
        prev = np.where(sign[t] != 0, sign[t], prev)
    return changes, last


def pair_reversals(beta: np.ndarray, signs: np.ndarray, a: int | np.ndarray, b: int | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edge rule of "uncertain" for the class pair (a, b), per prototype k (for index arrays
    ``a``, ``b`` of P pairs: every pair at once, each result (K, P)).

    ``signs`` (T-1, K, M) is the significant sign of every coefficient (``coefficient_signs`` or
    ``interval_signs``). At interval t the edge b -> a holds when ``signs[t, k, a] = +1`` and
    ``signs[t, k, b] = -1`` (k moved confidence from b to a), the edge a -> b when the signs are the
    other way round, and no edge otherwise. A reversal is an edge followed, at a later interval with
    an edge (intervals without one are skipped), by the edge of the other direction: b -> a, a -> b,
    b -> a is two reversals. Returns three (K,) arrays: the number of reversals; the mean, over the
    intervals with an edge, of ``min(|beta[t, k, a]|, |beta[t, k, b]|)`` (0 without an edge); and
    the interval of the last reversal (-1 if none).
    """
    beta = np.asarray(beta, dtype=np.float64)
    sa, sb = signs[:, :, a], signs[:, :, b]
    edge = np.where((sa > 0) & (sb < 0), 1, 0) - np.where((sa < 0) & (sb > 0), 1, 0)  # (T-1, K): +1 b -> a, -1 a -> b
    reversals, last = _sign_changes(edge)
    held = edge != 0
    hits = held.sum(axis=0)
    smaller = np.minimum(np.abs(beta[:, :, a]), np.abs(beta[:, :, b]))
    magnitude = np.where(hits > 0, (smaller * held).sum(axis=0) / np.maximum(hits, 1), 0.0)
    return reversals, magnitude, last
