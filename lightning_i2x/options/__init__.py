"""Typed option groups, each checked once, in one style.

Every group is a frozen dataclass validated in ``__post_init__``; a bad value raises ``ValueError``
with the message ``"<Group>.<field> must be <what>, got <value>"``, when the group is built (so at
``I2XCallback(...)``, before any training). ``I2XCallback`` takes the groups as arguments, the
LightningCLI reads them from nested YAML, and the run stores them (``RunConfig``) in its manifest.

Example::

    >>> ExplainOptions(min_flips=3).min_flips
    3
    >>> ExplainOptions(shared_frac=2.0)
    Traceback (most recent call last):
    ...
    ValueError: ExplainOptions.shared_frac must be a fraction in (0, 1], got 2.0
"""


from ..errors import OptionsError
from ._base import (
    FILLS,
    IMAGE_FILLS,
    SALIENCY_THRESHOLD,
    SIGNIFICANCE_METHODS,
    UNCERTAIN_RULES,
    CamTarget,
    FinetuneMode,
    MaskFill,
    MaskRegion,
    Phase,
    Significance,
    UncertainRule,
)
from ._finetune import FinetuneOptions
from ._groups import ExplainOptions, IGOSOptions, ProbePassOptions, PrototypeOptions, ViewOptions
from ._run import RunConfig, check_groups, replace

__all__ = [
    "CamTarget",
    "ProbePassOptions",
    "IGOSOptions",
    "PrototypeOptions",
    "ExplainOptions",
    "ViewOptions",
    "FinetuneOptions",
    "RunConfig",
    "OptionsError",
    "FILLS",
    "IMAGE_FILLS",
    "SALIENCY_THRESHOLD",
    "UNCERTAIN_RULES",
    "SIGNIFICANCE_METHODS",
    "check_groups",
    "replace",
    "MaskFill",
    "MaskRegion",
    "FinetuneMode",
    "Phase",
    "UncertainRule",
    "Significance",
]
