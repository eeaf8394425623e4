"""The option types' shared parts: the literal choices, constants, the field checks and the base class."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar, Literal, get_args

from .._core import field_bool as _bool
from .._core import field_choice as _choice
from .._core import field_fraction as _fraction
from .._core import field_int as _int
from .._core import field_number as _number
from .._core import set_field as _set
from ..errors import OptionsError

# re-exported to the groups' modules: the checks of _core under the short names they use
__all__ = ["_bool", "_choice", "_fraction", "_int", "_number", "_set", "_Options"]

CamTarget = Literal["label", "predicted"]
PrototypeSource = Literal["kmeans", "channels"]
FinetuneMode = Literal["remove", "mask"]
MaskFill = Literal["blur", "noise", "baseline", "random", "mean", "resample"]
FILLS: tuple[str, ...] = get_args(MaskFill)
"""The fills that hide pixels (``lightning_i2x.perturb``), in the order a stored reliance indexes them
(new fills are appended, never inserted: a stored reliance keeps its fill's index)."""
IMAGE_FILLS: tuple[str, ...] = ("blur", "noise", "baseline", "random")
"""The fills computed from the image alone (``"mean"`` needs the batch's mean image, ``"resample"``
another image), so the ones the fine-tuning's mask mode can apply one sample at a time."""
MaskRegion = Literal["salient", "all"]
Phase = Literal["curated", "full"]
UncertainRule = Literal["edges", "difference"]
UNCERTAIN_RULES: tuple[str, ...] = get_args(UncertainRule)
"""The readings of "uncertain": the edge between a and b reverses (``analysis.pair_reversals``), or
the sign of ``beta_a - beta_b`` flips (``analysis.pair_flips``, the rule of 0.1 and 0.2)."""
Significance = Literal["tau", "bootstrap", "stderr"]
SIGNIFICANCE_METHODS: tuple[str, ...] = get_args(Significance)
"""When a coefficient counts as positive or negative: above a threshold tau, or its bootstrap or
standard-error interval excludes 0 (``analysis.ridge_intervals``)."""

SALIENCY_THRESHOLD = 0.5
"""The method's default: a location is salient when its min-max normalised saliency is >= 0.5."""




class _Options:
    """Shared behaviour: plain-dict round trip, strict about names."""

    LEGACY: ClassVar[dict[str, Any]] = {}
    """The fields added after 0.2 and the values that give 0.2's behaviour (a stored run without them)."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, _Options) else list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_stored(cls, values: dict[str, Any], *, strict: bool = True):
        """``from_dict`` of a stored run's options: the fields added after 0.2 that it lacks take
        their 0.2 values (``LEGACY``), so a run recorded by 0.1 or 0.2 reads as it did then;
        ``strict``: every other field must be there."""
        if isinstance(values, dict):
            values = {**{k: v for k, v in cls.LEGACY.items() if k not in values}, **values}
        return cls.from_dict(values, strict=strict)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True):
        """Build from ``to_dict()`` output. ``strict``: every field must be there (a stored run);
        otherwise missing fields take their defaults. Unknown names always fail."""
        if not isinstance(values, dict):
            raise OptionsError(f"{cls.__name__} must be stored as a mapping, got {type(values).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise OptionsError(f"{cls.__name__} has no option(s) {unknown}; its options are {sorted(names)}")
        missing = sorted(names - set(values))
        if strict and missing:
            raise OptionsError(f"{cls.__name__} is missing {missing}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise OptionsError(str(e)) from None
