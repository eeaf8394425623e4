"""What every layer shares: the no-side-effect guards, atomic writes, the forward convention, one
set of argument checks, item splitting and the optional-dependency check. Imports nothing of the
package above it."""

from ._atomic import write_bytes, write_json, write_npz
from ._checks import check_bool, check_choice, check_fraction, check_int, check_number, fail, is_int, is_number
from ._forward import ForwardFn, default_forward, forward, model_device
from ._guards import evaluation_mode, preserved_rng, preserved_training_state
from ._items import split_batch, split_item
from ._optional import require

__all__ = [
    "write_bytes", "write_json", "write_npz",
    "fail", "is_int", "is_number", "check_int", "check_fraction", "check_number", "check_choice", "check_bool",
    "ForwardFn", "default_forward", "forward", "model_device",
    "preserved_rng", "preserved_training_state", "evaluation_mode",
    "split_item", "split_batch",
    "require",
]
