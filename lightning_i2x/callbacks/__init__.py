"""The Lightning callbacks: ``I2XCallback``, glue around the record pipeline, and the opt-in
``RepairDuringTraining``, the one that changes training."""

from ._i2x import I2XCallback
from ._repair import RepairDuringTraining, RepairStart

__all__ = ["I2XCallback", "RepairDuringTraining", "RepairStart"]
