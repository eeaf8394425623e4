"""lightning_i2x: I2X structured explanations of image classifiers, recorded while they train."""

from .analysis import prototype_intensity, ridge
from .callback import I2XCallback
from .explanation import Explanation, LearningStep, UncertainPrototype, explain
from .finetune import FinetuneResult, PerturbationFinetuner
from .prototypes import Prototypes, fit_prototypes
from .run import I2XRun, I2XRunError

__version__ = "0.1.0"

__all__ = [
    "I2XCallback",
    "I2XRun",
    "I2XRunError",
    "PerturbationFinetuner",
    "FinetuneResult",
    "Explanation",
    "UncertainPrototype",
    "LearningStep",
    "explain",
    "Prototypes",
    "fit_prototypes",
    "prototype_intensity",
    "ridge",
]
