"""How the package touches a user's model and data: the no-side-effect guards (RNG, training mode,
eval mode), the ``forward_fn`` convention, and reading ``(image, label)`` items."""

from ._forward import ForwardFn, default_forward, forward, model_device
from ._guards import evaluation_mode, preserved_rng, preserved_training_state
from ._items import split_batch, split_item

__all__ = [
    "ForwardFn", "default_forward", "forward", "model_device",
    "preserved_rng", "preserved_training_state", "evaluation_mode",
    "split_item", "split_batch",
]
