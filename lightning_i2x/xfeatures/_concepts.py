"""The x-features as an I2X concept source: their contributions at every checkpoint of a run.

The SRAEs are fitted on the final model; applied to each checkpoint's stored pooled features they
give the contributions (T, N, K) that ``run.explain(concepts="xfeatures")`` reads in place of the
prototype intensities, so the ridge tells which of these concepts moved each class's confidence
from one record to the next. The concepts keep the final model's meaning throughout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import I2XRunError
from ..store import XFEATURE_CONTRIBUTIONS, I2XRun
from ._explainer import XFeatureExplainer
from ._panel import XFeaturePanel

__all__ = ["CONTRIBUTIONS_ATTACHMENT", "PANEL_ATTACHMENT", "concept_contributions", "store_xfeatures", "StoredXFeatures", "stored_xfeatures"]

CONTRIBUTIONS_ATTACHMENT = XFEATURE_CONTRIBUTIONS
PANEL_ATTACHMENT = "xfeatures"
"""The attachment of the per-class panels (n_x, R^2, top images, saliency, contributions)."""


def concept_contributions(run: I2XRun, explainer: XFeatureExplainer) -> np.ndarray:
    """(T, N, K) contributions of every fitted class's x-features at every checkpoint of ``run``.
    Raises I2XRunError when the run's records hold no pooled features, ValueError when their
    width is not the explainer's."""
    pooled = run.pooled_features()
    d = next(iter(explainer.results.values())).srae.x_mean.shape[0] if explainer.results else None
    if d is None:
        raise ValueError("concept_contributions: the XFeatureExplainer is not fitted; call fit first")
    if pooled.shape[-1] != d:
        raise ValueError(f"the run's pooled features have {pooled.shape[-1]} dimensions, the x-features were fitted on {d}: "
                         "fit the explainer on the run's target layer")
    return explainer.contributions(pooled)


def store_xfeatures(run: I2XRun, explainer: XFeatureExplainer) -> bool:
    """Save the explainer's per-class panels and the contributions at every checkpoint in ``run``,
    tied to its latest checkpoint. Returns False, with a warning saying why, when the run's records
    hold no pooled features (runs recorded before 0.3): the panels are saved, the contributions not."""
    arrays: dict[str, np.ndarray] = {"classes": np.asarray(explainer.classes, np.int64)}
    for c in explainer.classes:
        arrays.update({f"c{c}_{k}": v for k, v in explainer[c].to_arrays().items()})
    run.save_attachment(PANEL_ATTACHMENT, arrays=arrays)
    try:
        contributions = concept_contributions(run, explainer)
    except I2XRunError as e:
        warnings.warn(f"x-feature panels saved, contributions not: {e}", stacklevel=2)
        return False
    run.save_attachment(CONTRIBUTIONS_ATTACHMENT, arrays={"contributions": contributions.astype(np.float32),
                                                          "concept_class": explainer.concept_classes})
    return True


@dataclass(frozen=True)
class StoredXFeatures(XFeaturePanel):
    """One class's panel as a run stored it (``XFeatureMeasure`` / ``store_xfeatures``):
    ``XFeaturePanel``'s fields and the ``checkpoint`` the panel is tied to."""

    checkpoint: int


def stored_xfeatures(run: I2XRun) -> list[StoredXFeatures]:
    """The panels stored in ``run`` (empty when there are none). Raises I2XRunError when damaged."""
    found = run.attachment(PANEL_ATTACHMENT)
    if found is None:
        return []
    arrays, checkpoint = found
    try:
        out = []
        for c in np.asarray(arrays["classes"]).tolist():
            a = {k: arrays[f"c{c}_{k}"] for k in ("r2", "contributions", "bias", "score", "top_images", "saliency")}
            out.append(StoredXFeatures(class_index=int(c), r2=float(a["r2"]), contributions=a["contributions"], bias=float(a["bias"]),
                                       score=a["score"], top_images=a["top_images"].astype(np.int64),
                                       saliency=a["saliency"].astype(np.float32), checkpoint=checkpoint))
        return out
    except (KeyError, TypeError, ValueError) as e:
        raise I2XRunError(f"{run.path}: the {PANEL_ATTACHMENT!r} attachment does not hold x-feature panels ({type(e).__name__}: {e})") from None
