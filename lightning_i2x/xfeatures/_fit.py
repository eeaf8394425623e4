"""One class's x-features: the SRAE fitted on standardised features and score, n_x chosen by the
BIC-like score, the held-out R^2, and the contributions in the score's own units."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .._core import check_int, fail
from .._model import preserved_rng
from ._srae import SRAE, SRAEOptions, bic_score, train_srae

__all__ = ["FittedSRAE", "fit_srae", "split_indices"]


def split_indices(n: int, held_out: float, validation: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit, validation, held-out) indices of a seeded permutation of n samples."""
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = max(1, int(round(held_out * n))), max(1, int(round(validation * n)))
    if n - n_test - n_val < 2:
        raise ValueError(f"x-features need at least 4 samples to split into fit, validation and held-out parts, got {n}")
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


@dataclass
class FittedSRAE:
    """An SRAE with the standardisation it was trained in: ``contributions(x)`` maps raw features
    (N, d) to the x-features' contributions (N, n_x) in the score's units, which sum with ``bias``
    to the reconstructed score."""

    model: SRAE
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float
    r2: float  # on the held-out part
    validation_scores: dict[int, float] = field(default_factory=dict)  # n_x tried -> BIC-like score

    @property
    def n_x(self) -> int:
        return self.model.n_x

    @property
    def head_weight(self) -> np.ndarray:
        return self.model.head.weight.detach()[0].numpy().astype(np.float64) * self.y_std

    @property
    def bias(self) -> float:
        return float(self.model.head.bias.detach()[0]) * self.y_std + self.y_mean

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - torch.as_tensor(self.x_mean, dtype=torch.float32)) / torch.as_tensor(self.x_std, dtype=torch.float32)

    def xfeatures(self, x: torch.Tensor) -> torch.Tensor:
        """The x-features (N, n_x) of raw features (N, d), differentiable in ``x``."""
        return self.model.encode(self.standardise(x))

    def contributions(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, n_x) x-feature times head weight, in the score's units."""
        with torch.no_grad():
            z = self.xfeatures(torch.from_numpy(np.array(x, dtype=np.float32)))
        return z.numpy().astype(np.float64) * self.head_weight

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.contributions(x).sum(axis=1) + self.bias


def _r2(pred: np.ndarray, y: np.ndarray) -> float:
    var = float(np.var(y))
    return float(1 - np.mean((pred - y) ** 2) / var) if var > 0 else float("nan")


def fit_srae(x: np.ndarray, y: np.ndarray, *, n_x: int | None = None, max_n_x: int = 5, options: SRAEOptions = SRAEOptions(),
             held_out: float = 0.2, validation: float = 0.2, split_seed: int = 0) -> FittedSRAE:
    """Fit an SRAE of x (N, d) to y (N,). With ``n_x`` None, every n_x = 1, 2, ... ``max_n_x`` is
    fitted and the one with the lowest BIC-like score (``bic_score`` on the validation part) is
    kept: the fits' quality is not monotone in n_x, so stopping at the first rise would miss a
    better larger one. The held-out part is used only for the R^2. The global RNG is left as it was."""
    check_int("fit_srae", "n_x", n_x, optional=True)
    check_int("fit_srae", "max_n_x", max_n_x)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"fit_srae needs x (N, d) and y (N,), got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("fit_srae: the features or the scores hold NaN or inf")
    if not 0 < held_out < 1 or not 0 < validation < 1 or held_out + validation >= 1:
        fail("fit_srae", "held_out + validation", "two fractions in (0, 1) summing to less than 1", (held_out, validation))
    fit_idx, val_idx, test_idx = split_indices(x.shape[0], held_out, validation, split_seed)
    x_mean, x_std = x[fit_idx].mean(axis=0), x[fit_idx].std(axis=0)
    x_std = np.where(x_std > 1e-8 * max(1.0, float(np.abs(x_std).max(initial=0.0))), x_std, 1.0)  # constant dimensions stay 0
    y_mean, y_std = float(y[fit_idx].mean()), float(y[fit_idx].std())
    if y_std == 0:
        raise ValueError("fit_srae: the score is constant on the fitting part; there is nothing to explain")
    xs, ys = (x - x_mean) / x_std, (y - y_mean) / y_std
    candidates = [n_x] if n_x is not None else list(range(1, max_n_x + 1))
    best: tuple[float, SRAE] | None = None
    scores: dict[int, float] = {}
    with preserved_rng():
        for k in candidates:
            model = train_srae(xs[fit_idx], ys[fit_idx], k, options)
            with torch.no_grad():
                pred = model(torch.as_tensor(xs[val_idx], dtype=torch.float32))[2].numpy()
            scores[k] = bic_score(float(np.mean((pred - ys[val_idx]) ** 2)), float(np.var(ys[val_idx])), len(val_idx), k)
            if best is None or scores[k] < best[0]:
                best = (scores[k], model)
    fitted = FittedSRAE(best[1], x_mean, x_std, y_mean, y_std, float("nan"), scores)
    fitted.r2 = _r2(fitted.predict(x[test_idx]), y[test_idx])
    return fitted
