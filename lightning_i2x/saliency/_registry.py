"""The saliency methods by name, with what each can do: the callback and the fine-tuner check an
argument against these capabilities instead of against method names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["SaliencyMethod", "CAM_METHODS", "saliency_method", "check_saliency_use", "saliency_label"]


@dataclass(frozen=True)
class SaliencyMethod:
    """One saliency method.

    kind: ``"native"`` (this package's GradCAM), ``"library"`` (a pytorch-grad-cam class, imported
        when first used) or ``"igos"`` (I-GOS / iGOS++ masks, ``lightning_i2x.saliency.igos_maps``).
    ddp_safe: runs under DDP: its backward stops at the target layer, so no parameter gradient is
        made that DDP would reduce across ranks.
    takes_forward_fn: honours ``forward_fn(model, images)`` (pytorch-grad-cam calls ``model(x)``).
    optional_normalisation: can return maps without min-max normalisation.
    """

    name: str
    kind: Literal["native", "library", "igos"]
    grad_cam_class: str | None = None
    ddp_safe: bool = False
    takes_forward_fn: bool = False
    optional_normalisation: bool = False


_LIBRARY = {
    "hirescam": "HiResCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM", "layercam": "LayerCAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM",
    "fullgrad": "FullGrad", "gradcamelementwise": "GradCAMElementWise", "kpcacam": "KPCA_CAM",
}

CAM_METHODS: dict[str, SaliencyMethod] = {
    "gradcam": SaliencyMethod("gradcam", "native", "GradCAM", ddp_safe=True, takes_forward_fn=True, optional_normalisation=True),
    **{name: SaliencyMethod(name, "library", cls) for name, cls in _LIBRARY.items()},
    "igos": SaliencyMethod("igos", "igos", takes_forward_fn=True, optional_normalisation=True),
    "igos++": SaliencyMethod("igos++", "igos", takes_forward_fn=True, optional_normalisation=True),
}
"""Every method ``I2XCallback(cam=...)`` and ``FinetuneOptions`` accept, by name."""


_LABELS = {"gradcam": "GradCAM", "gradcam++": "GradCAM++", "igos": "I-GOS", "igos++": "iGOS++"}


def saliency_label(name: str | None) -> str:
    """How captions name the maps of method ``name`` ("GradCAM", "iGOS++", pytorch-grad-cam's class
    name otherwise); "saliency" when the method is not known (a run without its configuration)."""
    if name in _LABELS:
        return _LABELS[name]
    method = CAM_METHODS.get(name) if name is not None else None
    return method.grad_cam_class if method is not None and method.grad_cam_class else "saliency"


def saliency_method(name: str, owner: str = "cam") -> SaliencyMethod:
    """The method called ``name``; a ValueError listing the known names otherwise."""
    if name not in CAM_METHODS:
        raise ValueError(f"{owner} must be one of {sorted(CAM_METHODS)}, got {name!r}")
    return CAM_METHODS[name]


def check_saliency_use(name: str, *, normalise: bool = True, forward_fn: object = None, owner: str = "I2XCallback") -> SaliencyMethod:
    """The method called ``name`` after checking it can do what is asked of it: maps without
    normalisation, a ``forward_fn``. Raises ValueError naming the methods that can."""
    method = saliency_method(name, f"{owner}.cam")
    if not normalise and not method.optional_normalisation:
        able = sorted(n for n, m in CAM_METHODS.items() if m.optional_normalisation)
        raise ValueError(f"ProbePassOptions.normalise_maps=False needs cam in {able}, got {name!r} (pytorch-grad-cam always normalises)")
    if forward_fn is not None and not method.takes_forward_fn:
        able = sorted(n for n, m in CAM_METHODS.items() if m.takes_forward_fn)
        raise ValueError(f"{owner}.forward_fn needs cam in {able}, got {name!r} (pytorch-grad-cam calls model(images))")
    return method
