"""lightning_i2x: I2X structured explanations of image classifiers, recorded while they train.

The subpackages follow the data flow (the README's "Map of the house" draws the allowed import
order, which an import contract in ``make test`` enforces): ``saliency`` (the probe pass's maps) and
``prototypes`` -> ``analysis`` (Steps 3-6, pure NumPy) -> ``store`` (the run directory) ->
``measures`` (faithfulness, reliance, SAG) -> ``record`` (the pipeline without a Trainer) ->
``finetune`` (Step 7) -> ``viz`` (figures, loggers, report) -> ``callbacks`` (the Lightning glue).
``options`` holds the typed option groups, ``perturb`` the fills, ``errors`` the errors.
"""

from . import _deprecated
from .analysis import Explanation, LearningStep, Reliance, UncertainPrototype, explain, prototype_intensity, ridge
from .callbacks import I2XCallback, RepairDuringTraining
from .errors import I2XRunError, OptionsError
from .finetune import FinetuneResult, PerturbationFinetuner
from .measures import FaithfulnessMeasure, InfoDisentMeasure, Measure, RelianceMeasure, SAGMeasure, XFeatureMeasure, reliance_of_run
from .options import ExplainOptions, FinetuneOptions, ProbePassOptions, PrototypeOptions, RunConfig, ViewOptions
from .prototypes import Prototypes, PrototypeStream, fit_prototypes
from .record import ProbeEvidence, Recorder, probe_pass
from .store import I2XRun
from .viz import LogSink

_deprecated.install()

__version__ = "0.3.0"

__all__ = [
    "I2XCallback",
    "RepairDuringTraining",
    "ProbePassOptions",
    "PrototypeOptions",
    "ExplainOptions",
    "ViewOptions",
    "FinetuneOptions",
    "RunConfig",
    "I2XRun",
    "I2XRunError",
    "OptionsError",
    "ProbeEvidence",
    "probe_pass",
    "Recorder",
    "LogSink",
    "Measure",
    "FaithfulnessMeasure",
    "SAGMeasure",
    "InfoDisentMeasure",
    "RelianceMeasure",
    "XFeatureMeasure",
    "reliance_of_run",
    "Reliance",
    "PerturbationFinetuner",
    "FinetuneResult",
    "Explanation",
    "UncertainPrototype",
    "LearningStep",
    "explain",
    "Prototypes",
    "fit_prototypes",
    "PrototypeStream",
    "prototype_intensity",
    "ridge",
]
