"""Where an x-feature looks: GradCAM of the x-feature with respect to the target layer.

The project's native GradCAM (``saliency.native_gradcam``) differentiates a class score; an
x-feature is a function of the target layer's output alone (pooled, standardised, encoded), so its
GradCAM needs no second pass through the model: the layer's map is captured once, the x-feature
computed from it, and GradCAM's formula applied to its gradient, ``ReLU(sum_c mean_hw(dz/dA_c) A_c)``,
min-max normalised with the native GradCAM's ``normalise_maps``. Since the x-feature reads the map
through a spatial mean, its gradient is the same at every location and the map is the x-feature's
CAM. The paper shows excitation backprop of each x-feature instead.
"""

from __future__ import annotations

import torch

from .._model import ForwardFn, evaluation_mode, forward, model_device, preserved_rng, preserved_training_state
from ..saliency import TargetLayer, normalise_maps
from ._features import pool_map
from ._fit import FittedSRAE

__all__ = ["xfeature_gradcam"]


def xfeature_gradcam(model: torch.nn.Module, layer: TargetLayer, srae: FittedSRAE, images: torch.Tensor, feature: int, *,
                     forward_fn: ForwardFn | None = None) -> torch.Tensor:
    """(B, h, w) float32 maps on the CPU of x-feature ``feature`` for ``images``; the model untouched."""
    captured: list[object] = []
    handle = layer.module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with preserved_rng(), preserved_training_state(model), evaluation_mode(model), torch.no_grad():
            forward(model, images.to(model_device(model)), forward_fn)
    finally:
        handle.remove()
    out = captured[-1]
    if layer.reshape_transform is not None:
        out = layer.reshape_transform(out)
    acts = out.detach().float().cpu().requires_grad_(True)
    with torch.enable_grad():
        z = srae.xfeatures(pool_map(acts, TargetLayer(layer.name, layer.module, layer.feature_shape, layer.num_classes)))[:, feature]
        (grad,) = torch.autograd.grad(z.sum(), acts)
    cam = torch.relu((grad.mean(dim=(2, 3))[:, :, None, None] * acts.detach()).sum(dim=1))
    return normalise_maps(cam)
