"""Step 7, targeted fine-tuning: what is targeted (``PairTarget``, ``PrototypeTarget``), which
training samples hold it (the training-set search), the datasets that remove or mask them, the
penalties (pixel regions, or the suspects' latent subspace: RR-ClArC, and P-ClArC's
``project_out`` with no training), the fine-tuner that runs it with the same-budget control, and
the paired intervals of every gain it claims. Imports no figure: results are plain data."""

from ._data import MaskedDataset
from ._finetuner import PerturbationFinetuner, finetune_after_fit
from ._latent import LatentBasis, Projection, basis_from_model, latent_penalty, parameters_after, project_out, suspect_basis
from ._penalty import balance_weight, gradcam_penalty, input_gradient_penalty
from ._result import FinetuneResult
from ._search import Selection, find_uncertain_samples, flag_samples
from ._targets import PairTarget, PrototypeTarget, Target, target_from_dict
from ._uncertainty import GainInterval, mcnemar_p, paired_gain

__all__ = [
    "PerturbationFinetuner", "FinetuneResult", "finetune_after_fit",
    "PairTarget", "PrototypeTarget", "Target", "target_from_dict",
    "Selection", "MaskedDataset", "flag_samples", "find_uncertain_samples",
    "input_gradient_penalty", "gradcam_penalty", "balance_weight",
    "LatentBasis", "suspect_basis", "basis_from_model", "latent_penalty", "parameters_after", "project_out", "Projection",
    "GainInterval", "paired_gain", "mcnemar_p",
]
