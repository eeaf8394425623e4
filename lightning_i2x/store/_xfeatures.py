"""What a run holds for the x-feature concepts (XNN): the pooled target-layer features of each
record, their input, and the contributions stored by ``lightning_i2x.xfeatures.store_xfeatures``
(``I2XRun`` inherits these; ``run.explain(concepts="xfeatures")`` reads the contributions)."""

from __future__ import annotations

import numpy as np

from ..errors import I2XRunError

__all__ = ["RunXFeatures", "XFEATURE_CONTRIBUTIONS", "NO_XFEATURES"]

XFEATURE_CONTRIBUTIONS = "xfeature-contributions"
"""The attachment holding the x-features' contributions (T, N, K) at every checkpoint."""

NO_XFEATURES = ("add XFeatureMeasure(classes=[...]) to I2XCallback(measures=[...]) or call "
                "lightning_i2x.xfeatures.store_xfeatures(run, explainer) with a fitted XFeatureExplainer first")


class RunXFeatures:
    """The x-feature readers of an ``I2XRun``: per-checkpoint pooled features and the stored
    contributions, each raising I2XRunError that says what to do when the run lacks them."""

    def pooled_features(self) -> np.ndarray:
        """(T, N, d) float32 target-layer features averaged over the locations, per checkpoint (the
        x-features' input). Raises I2XRunError when a checkpoint was recorded without them."""
        missing = [i for i, p in enumerate(self._pooled) if p is None]
        if not self._pooled or missing:
            which = "has no checkpoint yet" if not self._pooled else f"has checkpoints without pooled features ({len(missing)} of {len(self._pooled)}, first {missing[0]})"
            raise I2XRunError(f"{self.path} {which}: x-feature concepts need the target layer's pooled features of every record; "
                              "record the run again with lightning-i2x >= 0.3, whose records store them")
        return self._cached("pooled", lambda: np.stack(self._pooled))

    def xfeature_contributions(self) -> np.ndarray:
        """(T, N, K) the x-features' contributions at every checkpoint, K = all explained classes'
        x-features in turn. Raises I2XRunError saying what to do when the run holds none for its
        current checkpoints."""
        values = np.asarray(self._stored_contributions()["contributions"], dtype=np.float64)
        if values.ndim != 3 or values.shape[:2] != (self.num_checkpoints, self.num_probe):
            raise I2XRunError(f"{self.path} holds x-feature contributions of shape {values.shape}, not of its {self.num_checkpoints} "
                              f"checkpoints and {self.num_probe} probe images: {NO_XFEATURES} again")
        return values

    def xfeature_concepts(self) -> list[tuple[int, int]]:
        """(class, x-feature) of each column of ``xfeature_contributions``."""
        classes = np.asarray(self._stored_contributions()["concept_class"], dtype=np.int64)
        return [(int(c), int(np.sum(classes[:i] == c))) for i, c in enumerate(classes)]

    def _stored_contributions(self) -> dict[str, np.ndarray]:
        stored = self.attachment(XFEATURE_CONTRIBUTIONS)
        if stored is None:
            raise I2XRunError(f"{self.path} holds no x-feature contributions: {NO_XFEATURES}")
        return stored[0]
