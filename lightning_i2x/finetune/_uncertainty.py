"""How sure a claimed accuracy gain is: a paired comparison of two models on the same images.

Each validation image gives a pair (right before?, right after?). Only the discordant images move
the accuracy: ``gained`` (wrong -> right) and ``lost`` (right -> wrong); the gain is
``(gained - lost) / n``. ``paired_gain`` resamples the images with replacement (a paired
bootstrap, seeded): the per-image difference takes the values -1, 0 and +1 only, so a resample
is a multinomial draw of those three counts, exact and cheap for any ``n``. It also gives the
exact two-sided McNemar p-value (a binomial test of ``gained`` against ``gained + lost`` at 1/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GainInterval", "paired_gain", "mcnemar_p"]

LEVEL = 0.95
N_BOOTSTRAP = 10_000


@dataclass(frozen=True)
class GainInterval:
    """Accuracy of ``after`` minus ``before`` on the same ``n`` images, with its interval.

    gain: the observed difference (a fraction, e.g. 0.02 for +2 points); low / high: the paired
    bootstrap's percentile interval at ``level``; gained / lost: the discordant images (wrong ->
    right, right -> wrong); p_value: exact McNemar. ``within_noise``: the interval holds 0."""

    gain: float
    low: float
    high: float
    gained: int
    lost: int
    n: int
    p_value: float
    level: float = LEVEL
    n_bootstrap: int = N_BOOTSTRAP
    seed: int = 0

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high

    def describe(self) -> str:
        """``+2.00 points (95 % interval [-1.20, +5.20], 10 gained / 5 lost of 250: within noise)``."""
        verdict = "within noise" if self.within_noise else "beyond noise"
        return (f"{100 * self.gain:+.2f} points ({round(100 * self.level)} % interval [{100 * self.low:+.2f}, {100 * self.high:+.2f}], "
                f"{self.gained} gained / {self.lost} lost of {self.n} images: {verdict})")

    def to_dict(self) -> dict[str, Any]:
        return {"gain": self.gain, "low": self.low, "high": self.high, "level": self.level, "within_noise": self.within_noise,
                "gained": self.gained, "lost": self.lost, "n": self.n, "p_value": self.p_value,
                "method": "paired bootstrap over images", "n_bootstrap": self.n_bootstrap, "seed": self.seed}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GainInterval:
        keys = ("gain", "low", "high", "gained", "lost", "n", "p_value", "level", "n_bootstrap", "seed")
        return cls(**{k: values[k] for k in keys if k in values})


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value: ``gained`` of ``gained + lost`` discordant images under a
    fair coin (1.0 when there is no discordant image)."""
    n = int(gained) + int(lost)
    if n == 0:
        return 1.0
    k = min(int(gained), int(lost))
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return float(min(1.0, 2.0 * tail))


def paired_gain(labels: np.ndarray, pred_before: np.ndarray, pred_after: np.ndarray, *, seed: int = 0,
                level: float = LEVEL, n_bootstrap: int = N_BOOTSTRAP) -> GainInterval:
    """The accuracy gain of ``pred_after`` over ``pred_before`` on the same images, with a seeded
    paired-bootstrap interval and the exact McNemar p-value.

    Args:
        labels: (n,) true classes.
        pred_before: (n,) predicted classes of the reference (the model before, or the control).
        pred_after: (n,) predicted classes of the model compared with it, image for image.
        seed: seeds the bootstrap (its own generator; the global ones are not touched).
        level: the interval's coverage, in (0, 1).
        n_bootstrap: resamples.

    Returns:
        A ``GainInterval``.

    Raises:
        ValueError: arrays of other lengths, no image, or a level outside (0, 1).
    """
    y, a, b = (np.asarray(v).reshape(-1) for v in (labels, pred_before, pred_after))
    if not (y.shape == a.shape == b.shape):
        raise ValueError(f"labels, pred_before and pred_after must have one length, got {y.shape[0]}, {a.shape[0]}, {b.shape[0]}")
    if y.size == 0:
        raise ValueError("paired_gain needs at least one image")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ra, rb = a == y, b == y
    n = int(y.size)
    gained, lost = int((rb & ~ra).sum()), int((ra & ~rb).sum())
    rng = np.random.default_rng([int(seed), 20240617])
    p = np.array([lost, n - gained - lost, gained], dtype=np.float64) / n
    counts = rng.multinomial(n, p, size=int(n_bootstrap))
    diffs = (counts[:, 2] - counts[:, 0]) / n
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return GainInterval(gain=(gained - lost) / n, low=float(low), high=float(high), gained=gained, lost=lost, n=n,
                        p_value=mcnemar_p(gained, lost), level=float(level), n_bootstrap=int(n_bootstrap), seed=int(seed))
