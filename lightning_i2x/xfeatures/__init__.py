"""XNN's x-features: a few faithful concepts per class from a sparse reconstruction autoencoder.

``XFeatureExplainer`` fits, for chosen classes of a trained classifier, an SRAE (Qi, Khorram and
Li, "Embedding Deep Networks into Visual Explanations") from the pooled target-layer features to
the class score; ``concept_contributions`` turns a run's stored pooled features into the
x-features' contributions at every checkpoint, the concept source of ``run.explain(concepts="xfeatures")``.
"""

from ._concepts import CONTRIBUTIONS_ATTACHMENT, PANEL_ATTACHMENT, StoredXFeatures, concept_contributions, store_xfeatures, stored_xfeatures
from ._explainer import ClassXFeatures, XFeatureExplainer
from ._features import pool_map, pooled_features
from ._fit import FittedSRAE, fit_srae
from ._panel import XFeaturePanel
from ._saliency import xfeature_gradcam
from ._srae import SRAE, SRAEOptions, bic_score, log_reconstruction_loss, pull_away_loss, train_srae

__all__ = [
    "XFeatureExplainer", "ClassXFeatures", "XFeaturePanel", "SRAEOptions", "SRAE", "FittedSRAE", "fit_srae", "train_srae",
    "log_reconstruction_loss", "pull_away_loss", "bic_score", "pooled_features", "pool_map", "xfeature_gradcam",
    "concept_contributions", "store_xfeatures", "stored_xfeatures", "StoredXFeatures", "CONTRIBUTIONS_ATTACHMENT", "PANEL_ATTACHMENT",
]
