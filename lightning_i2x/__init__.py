"""lightning_i2x: I2X structured explanations of image classifiers, recorded while they train.

The data flow, one module a step: ``probe`` (the fixed probe set) -> ``cam`` (the probe pass:
activations, maps, confidences) -> ``record`` (the pipeline: evidence appended to the run,
prototypes refitted, explanation rebuilt) -> ``run`` (the store) -> ``analysis`` /
``explanation`` (Steps 3-6, pure NumPy) -> ``views`` + ``sinks`` (what every logger gets),
``plots``, ``report`` and ``finetune`` / ``selection`` (Step 7). ``measures`` are the further
model-dependent measures (``faithfulness``, ``sag``, ``reliance``); ``options`` holds the typed
option groups, ``callback`` the Lightning glue.
"""

from .analysis import prototype_intensity, ridge
from .callback import I2XCallback
from .explanation import Explanation, LearningStep, UncertainPrototype, explain
from .faithfulness import FaithfulnessMeasure
from .finetune import FinetuneResult, PerturbationFinetuner
from .options import ExplainOptions, FinetuneOptions, ProbePassOptions, PrototypeOptions, RunConfig, ViewOptions
from .prototypes import Prototypes, PrototypeStream, fit_prototypes
from .record import ProbeEvidence, Recorder, probe_pass
from .reliance import RelianceMeasure
from .run import I2XRun, I2XRunError
from .sag import SAGMeasure
from .sinks import LogSink

__version__ = "0.2.0"

__all__ = [
    "I2XCallback",
    "ProbePassOptions",
    "PrototypeOptions",
    "ExplainOptions",
    "ViewOptions",
    "FinetuneOptions",
    "RunConfig",
    "I2XRun",
    "I2XRunError",
    "ProbeEvidence",
    "probe_pass",
    "Recorder",
    "LogSink",
    "FaithfulnessMeasure",
    "SAGMeasure",
    "RelianceMeasure",
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
