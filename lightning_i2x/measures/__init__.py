"""Measures that need the model, run by ``I2XCallback(measures=[...])`` after a record or at the
end of fit: faithfulness (deletion/insertion), reliance on each prototype, SAG's minimal
sufficient explanations, InfoDisent/EPIC's disentangled channels, the causal twin surrogate
(``TwinMeasure``) and XNN's x-features (``XFeatureMeasure``), the last two at the end of fit. Each
also works on its own, on a model and a run."""

from ._channels import INFODISENT_ATTACHMENT, InfoDisentMeasure
from ._faithfulness import FaithfulnessMeasure, FaithfulnessResult, deletion_insertion, pixel_ranks, random_baseline, random_maps
from ._protocol import Measure, check_measures
from ._refine import REFINED_RULE_DEFAULTS, RefinedSuspects, location_drops, refine_suspects, refine_suspects_of_run
from ._reliance import (
    DEFAULT_FILL,
    DEFAULT_INTERVENTION,
    RelianceMeasure,
    latent_reliance,
    prototype_reliance,
    prototype_subspaces,
    random_locations,
    reliance_of_run,
)
from ._sag import (
    DEFAULT_BLUR,
    DEFAULT_SIZE_SLACK,
    SAG,
    MSEResult,
    SAGEdge,
    SAGMeasure,
    SAGNode,
    StoredSAG,
    default_grid_size,
    diverse_mses,
    grid_regions,
    minimal_sufficient_explanations,
    mse_stats,
    sag,
    sag_blur_sigma,
    stored_sags,
)
from ._twin import TwinMeasure, stored_twin
from ._xfeatures import XFeatureMeasure

__all__ = [
    "Measure", "check_measures",
    "InfoDisentMeasure", "INFODISENT_ATTACHMENT",
    "FaithfulnessMeasure", "FaithfulnessResult", "deletion_insertion", "pixel_ranks", "random_baseline", "random_maps",
    "REFINED_RULE_DEFAULTS", "RefinedSuspects", "location_drops", "refine_suspects", "refine_suspects_of_run",
    "RelianceMeasure", "prototype_reliance", "latent_reliance", "prototype_subspaces", "random_locations", "reliance_of_run", "DEFAULT_FILL",
    "DEFAULT_INTERVENTION",
    "SAG", "SAGNode", "SAGEdge", "MSEResult", "SAGMeasure", "StoredSAG", "stored_sags", "sag", "minimal_sufficient_explanations",
    "diverse_mses", "mse_stats", "grid_regions", "default_grid_size", "sag_blur_sigma", "DEFAULT_BLUR", "DEFAULT_SIZE_SLACK",
    "TwinMeasure", "stored_twin", "XFeatureMeasure",
]
