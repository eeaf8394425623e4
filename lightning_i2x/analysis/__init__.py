"""The analysis core (Steps 3-6 of I2X), pure NumPy: prototype intensities, the ridge of
confidence moves on intensity moves, learning groups, the structured explanation, the suspect rule
on arrays, the prototypes' centred latent subspace, and choosing what is worth showing. Imports no
torch, lightning, FAISS or matplotlib (an import contract keeps it so)."""

from ._basis import LatentBasis, suspect_basis
from ._choose import (
    Pair,
    class_rows,
    competing_class,
    pair_prototypes,
    pair_rows,
    resolve_pairs,
    select_classes,
    select_pairs,
    select_prototypes,
)
from ._explanation import Explanation, LearningStep, UncertainPrototype, explain
from ._refine import ReliedClusters, relied_clusters
from ._reliance import INTERVENTIONS, RELIANCE_ATTACHMENT, Reliance
from ._steps import (
    MAX_CLUSTER_SAMPLES,
    SALIENCY_THRESHOLD,
    SIGNIFICANCE_METHODS,
    UNCERTAIN_RULES,
    bootstrap_counts,
    coefficient_signs,
    default_min_cluster_size,
    interval_deltas,
    interval_signs,
    interval_thresholds,
    learning_groups,
    pair_flips,
    pair_reversals,
    prototype_counts,
    prototype_intensity,
    ridge,
    ridge_intervals,
    salient_mask,
    salient_presence,
)
from ._suspects import (
    SUSPECT_RULE_DEFAULTS,
    SUSPECT_RULE_OPTIONS,
    Criterion,
    SuspectCandidate,
    SuspectReport,
    Suspects,
    intensity_rise,
    prototype_geometry,
    suspect_prototypes,
    suspect_report,
)

__all__ = [
    "prototype_counts", "prototype_intensity", "interval_deltas", "ridge", "learning_groups", "default_min_cluster_size",
    "MAX_CLUSTER_SAMPLES", "SALIENCY_THRESHOLD", "salient_mask", "salient_presence", "interval_thresholds", "pair_flips",
    "pair_reversals", "coefficient_signs", "interval_signs", "bootstrap_counts", "ridge_intervals", "UNCERTAIN_RULES",
    "SIGNIFICANCE_METHODS",
    "Explanation", "UncertainPrototype", "LearningStep", "explain",
    "Reliance", "RELIANCE_ATTACHMENT", "INTERVENTIONS", "prototype_geometry", "suspect_prototypes", "SUSPECT_RULE_OPTIONS",
    "SUSPECT_RULE_DEFAULTS", "suspect_report", "SuspectReport", "SuspectCandidate", "Criterion", "Suspects", "intensity_rise",
    "LatentBasis", "suspect_basis", "ReliedClusters", "relied_clusters",
    "Pair", "resolve_pairs", "pair_prototypes", "select_pairs", "select_classes", "select_prototypes", "class_rows", "competing_class",
    "pair_rows",
]
