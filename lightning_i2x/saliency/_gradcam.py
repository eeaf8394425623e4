"""The native GradCAM: one forward with a graph that starts at the target layer.

It hooks the target layer, runs one forward, and takes ``torch.autograd.grad`` of the target scores
with respect to that layer's output only: no parameter ``.grad`` is touched, the backward stops at
the target layer, and everything stays on the model's device.

Autograd records only what runs after the target layer: the forward starts with grad recording
off and the target layer's forward hook switches it on and hands on a fresh leaf cut from the
layer's output (``graph_from_layer``), so a probe batch costs about a no_grad forward's memory
instead of keeping every layer's activations for a backward that never reaches them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._model import ForwardFn, default_forward, model_device

__all__ = ["ProbeBatch", "native_gradcam", "normalise_maps", "graph_from_layer", "grad_enabled_full_precision", "model_input"]


@dataclass
class ProbeBatch:
    """What one probe batch yields, all on the model's device: activations (B, d, h, w) in the
    layer's dtype, CAM maps (B, h, w) and softmax confidences (B, M) in float32."""

    activations: torch.Tensor
    cams: torch.Tensor
    confidences: torch.Tensor


def normalise_maps(cam: torch.Tensor) -> torch.Tensor:
    """Min-max per map, pytorch-grad-cam's convention: (x - min) / (1e-7 + max(x - min))."""
    flat = cam.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (1e-7 + flat.max(dim=1, keepdim=True).values)
    return flat.view_as(cam)


@contextlib.contextmanager
def grad_enabled_full_precision(device: torch.device):
    """Autograd on, outside inference mode, autocast off: the CAM maps are computed in float32
    whether validation runs under no_grad, inference_mode or mixed precision."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
        yield


@contextlib.contextmanager
def graph_from_layer(layer: torch.nn.Module, device: torch.device):
    """Outside inference mode and autocast, with grad recording OFF until ``layer`` has run: its
    forward hook (run before any other hook on it) switches recording on for the rest of the
    forward and hands on ``out.detach().requires_grad_(True)`` (cloned, so an in-place op after
    the layer still works), so the autograd graph starts at the layer. Yields the list the hook
    appends that handed-on output to, one entry per call of the layer. The caller's grad mode
    comes back on exit, exception or not (``torch.no_grad`` restores the mode it found)."""
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, out):
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise TypeError(f"the target layer outputs {type(out).__name__}, not a floating-point tensor; choose a layer that returns one")
        torch.set_grad_enabled(True)
        handed_on = out.detach().requires_grad_(True).clone()
        captured.append(handed_on)
        return handed_on

    handle = layer.register_forward_hook(hook, prepend=True)
    try:
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            yield captured
    finally:
        handle.remove()


def model_input(images: torch.Tensor, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """A fresh (non-inference) tensor on the model's device in its floating dtype."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return images.to(device=device, dtype=dtype).clone()


def native_gradcam(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    reshape_transform: Callable | None = None,
    forward_fn: ForwardFn = default_forward,
    normalise: bool = True,
) -> ProbeBatch:
    """GradCAM at feature resolution for one batch; ``targets`` None = the predicted class."""
    device = model_device(model)
    with graph_from_layer(layer, device) as captured:
        logits = forward_fn(model, model_input(images, model, device))
        if not captured:
            raise RuntimeError("the target layer did not run in the model's forward")
        out = captured[-1]
        logits = logits.float()
        target = logits.argmax(dim=1) if targets is None else targets.to(device)
        score = logits.gather(1, target.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, out, allow_unused=True) if score.requires_grad else (None,)
        if grad is None:
            raise RuntimeError(
                "the model's scores do not depend on the target layer's output through autograd (is the part "
                "after the target layer detached or run under torch.no_grad()?); choose another target layer"
            )
    acts = out.detach()
    if reshape_transform is not None:
        acts, grad = reshape_transform(acts), reshape_transform(grad)
    dtype = torch.promote_types(acts.dtype, torch.float32)  # half and bfloat16 maps in float32
    a32, g32 = acts.to(dtype), grad.to(dtype)
    cam = torch.relu((g32.mean(dim=(2, 3))[:, :, None, None] * a32).sum(dim=1))
    if normalise:
        cam = normalise_maps(cam)
    return ProbeBatch(acts, cam, torch.softmax(logits.detach(), dim=1))
