"""Step 7, targeted fine-tuning: which training samples hold the targeted prototypes (the
training-set search), the datasets that remove or mask them, the penalties, and the fine-tuner that
runs it with the same-budget control. Imports no figure: results are plain data."""

from ._finetuner import FinetuneResult, PerturbationFinetuner, finetune_after_fit
from ._penalty import balance_weight, gradcam_penalty, input_gradient_penalty
from ._search import ANY_CLASS, MaskedDataset, Selection, find_uncertain_samples, flag_samples

__all__ = [
    "PerturbationFinetuner", "FinetuneResult", "finetune_after_fit",
    "Selection", "MaskedDataset", "flag_samples", "find_uncertain_samples", "ANY_CLASS",
    "input_gradient_penalty", "gradcam_penalty", "balance_weight",
]
