"""NOTEARS for a linear structural equation model (Zheng, Aragam, Ravikumar, Xing, NeurIPS 2018).

Least squares with an L1 penalty under the smooth acyclicity constraint
h(W) = tr(exp(W o W)) - d = 0, solved by the augmented Lagrangian: each inner problem by scipy's
L-BFGS-B on W split into its positive and negative parts (both bounded below by 0, so the L1 term
is smooth), the multiplier raised by rho h and rho multiplied by 10 until h falls by a quarter.
Entries that background knowledge forbids (the diagonal, and here the logit's outgoing edges) are
bounded to 0. Small edges are cut at ``w_threshold`` at the end, as in the paper.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize

from .._core import check_number

__all__ = ["notears_linear", "structural_hamming_distance", "fit_linear_sem"]


def notears_linear(x, *, lambda1: float = 0.05, w_threshold: float = 0.3, forbidden=None, max_iter: int = 100,
                   h_tol: float = 1e-8, rho_max: float = 1e16) -> np.ndarray:
    """The weighted adjacency W (d x d; ``W[i, j]`` is the edge i -> j) of a linear SEM fitted to
    ``x`` (n samples x d variables, centred here). ``forbidden``: a boolean (d, d) mask of edges
    that may not appear. Returns W with entries below ``w_threshold`` in magnitude set to 0."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"notears_linear.x must be (n samples >= 2, d variables >= 2), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("notears_linear.x must be finite")
    check_number("notears_linear", "lambda1", lambda1)
    check_number("notears_linear", "w_threshold", w_threshold)
    n, d = x.shape
    x = x - x.mean(axis=0)
    mask = np.eye(d, dtype=bool)
    if forbidden is not None:
        forbidden = np.asarray(forbidden, dtype=bool)
        if forbidden.shape != (d, d):
            raise ValueError(f"notears_linear.forbidden must be a ({d}, {d}) boolean mask, got shape {forbidden.shape}")
        mask |= forbidden
    bounds = [(0.0, 0.0) if mask[i, j] else (0.0, None) for _ in range(2) for i in range(d) for j in range(d)]

    def unpack(w):
        return (w[: d * d] - w[d * d:]).reshape(d, d)

    def objective(w, rho, alpha):
        W = unpack(w)
        r = x - x @ W
        loss = 0.5 / n * (r**2).sum()
        g_loss = -1.0 / n * x.T @ r
        e = scipy.linalg.expm(W * W)
        h = np.trace(e) - d
        g_h = e.T * W * 2.0
        obj = loss + 0.5 * rho * h * h + alpha * h + lambda1 * w.sum()
        g = g_loss + (rho * h + alpha) * g_h
        return obj, np.concatenate([g.ravel() + lambda1, -g.ravel() + lambda1])

    def h_of(w):
        W = unpack(w)
        return np.trace(scipy.linalg.expm(W * W)) - d

    from threadpoolctl import threadpool_limits  # on first use: not at ``import lightning_i2x``

    with threadpool_limits(1):  # d x d products: BLAS threads only contend
        w = _augmented_lagrangian(objective, h_of, bounds, d, max_iter, h_tol, rho_max)
    W = unpack(w)
    W[np.abs(W) < w_threshold] = 0.0
    return W


def _augmented_lagrangian(objective, h_of, bounds, d, max_iter, h_tol, rho_max) -> np.ndarray:
    w, rho, alpha, h = np.zeros(2 * d * d), 1.0, 0.0, np.inf
    for _ in range(max_iter):
        while rho < rho_max:
            sol = scipy.optimize.minimize(objective, w, args=(rho, alpha), jac=True, method="L-BFGS-B", bounds=bounds)
            h_new = h_of(sol.x)
            if h_new > 0.25 * h:
                rho *= 10
            else:
                break
        w, h = sol.x, h_new
        alpha += rho * h
        if h <= h_tol or rho >= rho_max:
            break
    return w


def structural_hamming_distance(a, b) -> int:
    """Edges to add, remove or reverse to turn graph ``a`` into ``b`` (nonzero = edge; a reversed
    edge counts once)."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    diff = a != b
    reversed_ = diff & diff.T & (a != a.T) & (b != b.T)
    return int(diff.sum() - reversed_.sum() // 2)


def fit_linear_sem(x, graph) -> tuple[np.ndarray, np.ndarray]:
    """Refit each variable on its parents in ``graph`` by least squares (no penalty): the
    coefficients (d x d, ``W[i, j]`` for i -> j) and the intercepts (d,)."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(graph) != 0
    d = x.shape[1]
    W, b = np.zeros((d, d)), x.mean(axis=0).copy()
    for j in range(d):
        parents = np.flatnonzero(g[:, j])
        if parents.size:
            a = np.column_stack([x[:, parents], np.ones(len(x))])
            coef = np.linalg.lstsq(a, x[:, j], rcond=None)[0]
            W[parents, j], b[j] = coef[:-1], coef[-1]
    return W, b
