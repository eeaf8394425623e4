"""pytorch-grad-cam's methods, at feature resolution, their side effects on the model undone.

pytorch-grad-cam (and the OpenCV it imports) is loaded on the first call, never by
``import lightning_i2x``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import torch

from .._core import require
from .._model import model_device, preserved_training_state
from ._gradcam import ProbeBatch, grad_enabled_full_precision, graph_from_layer, model_input
from ._registry import CAM_METHODS

__all__ = ["library_cam_class", "library_cam"]


def library_cam_class(name: str) -> type:
    """The pytorch-grad-cam class for ``name``, made to return maps at feature resolution."""
    base = getattr(require("pytorch_grad_cam"), CAM_METHODS[name].grad_cam_class)

    class FeatureResolution(base):
        def get_target_width_height(self, input_tensor):
            acts = self.activations_and_grads.activations
            if acts:
                return acts[0].shape[-1], acts[0].shape[-2]
            return super().get_target_width_height(input_tensor)

    FeatureResolution.__name__ = f"{base.__name__}AtFeatureResolution"
    return FeatureResolution


def library_cam(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    method: str,
    reshape_transform: Callable | None = None,
) -> ProbeBatch:
    """Any pytorch-grad-cam method for one batch, its side effects on the model undone."""
    device = model_device(model)
    cam_class = library_cam_class(method)
    uses_gradients, input_gradient = _library_needs(cam_class.__mro__[1])
    if input_gradient:  # FullGrad: gradients down to the input, the whole graph is needed
        context = grad_enabled_full_precision(device)
    elif uses_gradients:  # a graph from the target layer on, as in native_gradcam
        context = graph_from_layer(layer, device)
    else:  # gradient-free methods: no graph at all
        context = _no_grad_full_precision(device)
    with preserved_training_state(model), context:
        cam = cam_class(model=model, target_layers=[layer], reshape_transform=reshape_transform)
        try:
            x = model_input(images, model, device)
            target_class = require("pytorch_grad_cam.utils.model_targets").ClassifierOutputTarget
            cam_targets = None if targets is None else [target_class(int(t)) for t in targets]
            maps = cam(input_tensor=x, targets=cam_targets)
            logits = cam.outputs.detach().float()
            acts = cam.activations_and_grads.activations[0].to(device)
        finally:
            cam.activations_and_grads.release()
    return ProbeBatch(acts, torch.as_tensor(maps, device=device, dtype=torch.float32), torch.softmax(logits, dim=1))


@contextlib.contextmanager
def _no_grad_full_precision(device: torch.device):
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        yield


_LIBRARY_NEEDS: dict[type, tuple[bool, bool]] = {}


def _library_needs(cam_class: type) -> tuple[bool, bool]:
    """(uses_gradients, compute_input_gradient) of a pytorch-grad-cam class, read from a
    throw-away instance on a one-layer model (the library sets them in each constructor)."""
    if cam_class not in _LIBRARY_NEEDS:
        probe = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))
        with contextlib.redirect_stdout(io.StringIO()):  # FullGrad prints that it ignores target_layers
            cam = cam_class(model=probe, target_layers=[probe[0]])
        try:
            _LIBRARY_NEEDS[cam_class] = (bool(getattr(cam, "uses_gradients", True)), bool(getattr(cam, "compute_input_gradient", False)))
        finally:
            cam.activations_and_grads.release()
    return _LIBRARY_NEEDS[cam_class]
