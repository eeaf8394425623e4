"""A GLANCE-inspired causal twin surrogate over measured context (Morpho-MNIST measures).

``fit_twin(model, data)`` distils a classifier into a small VAE whose first latents are aligned to
measured concepts (``morpho_measures`` by default: Castro et al.'s thickness, slant, ...), fits a
causal graph (NOTEARS, linear) over the concepts, the residual latents and the classifier's logit
(a sink), and answers interventions ``do(c_j = v)``: decoded, classified and re-measured. Inspired
by GLANCE (Kori, Glocker, Toni, arXiv 2207.01917), not a reproduction: a small VAE instead of
StyleGAN-v2, MNIST-sized images. scikit-image (the extra ``morpho``) is needed for the measures.
"""

from ._fit import LOGIT, TwinResult, fit_twin
from ._morpho import MORPHO_NAMES, ContextFn, morpho_measures, set_slant, set_thickness, shear, thicken, thin
from ._notears import fit_linear_sem, notears_linear, structural_hamming_distance
from ._surrogate import SurrogateLosses, TwinVAE

__all__ = [
    "fit_twin", "TwinResult", "LOGIT", "SurrogateLosses", "TwinVAE",
    "morpho_measures", "MORPHO_NAMES", "ContextFn", "thicken", "thin", "shear", "set_slant", "set_thickness",
    "notears_linear", "structural_hamming_distance", "fit_linear_sem",
]
