"""One class's x-feature panel: the fields and derived values that a fitted explainer and a
run's stored copy share, so the views, the report and the dashboard read either the same way."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["XFeaturePanel"]


@dataclass(frozen=True)
class XFeaturePanel:
    """One class's x-features on the probe set: ``contributions`` (N, n_x) in the score's units sum
    with ``bias`` to ``explained`` (N,), the SRAE's reconstruction of ``score`` (N,), the network's
    score; ``top_images`` (n_x, k) probe indices where each x-feature is largest, ``saliency``
    (n_x, k, h, w) their GradCAM maps; ``r2`` on the held-out part."""

    class_index: int
    r2: float
    contributions: np.ndarray
    bias: float
    score: np.ndarray
    top_images: np.ndarray
    saliency: np.ndarray

    @property
    def n_x(self) -> int:
        return int(self.contributions.shape[1])

    @property
    def explained(self) -> np.ndarray:
        """The reconstructed score (N,), float64 whatever the contributions' storage dtype."""
        return self.contributions.astype(np.float64).sum(axis=1) + self.bias
