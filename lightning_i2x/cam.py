"""Step 2: one pass over the probe set gives activations, CAM maps and confidences.

The native "gradcam" path hooks the target layer, runs one forward, and takes
``torch.autograd.grad`` of the target scores with respect to that layer's output only: no
parameter ``.grad`` is touched, the backward stops at the target layer, and everything stays on the
model's device. Every other CAM method runs through pytorch-grad-cam, wrapped so that its side
effects (``model.eval()``, hooks, zeroed ``.grad``) are undone.

Autograd records only what runs after the target layer: the forward starts with grad recording
off and the target layer's forward hook switches it on and hands on a fresh leaf cut from the
layer's output (``graph_from_layer``), so a probe batch costs about a no_grad forward's memory
instead of keeping every layer's activations for a backward that never reaches them.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Callable, Iterator

import pytorch_grad_cam as pgc
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from .guards import evaluation_mode, preserved_training_state

__all__ = ["CAM_METHODS", "ProbeBatch", "probe_batches", "native_gradcam", "library_cam_class", "graph_from_layer"]

class IGOSMethod:
    """Stands for cam="igos" in ``CAM_METHODS``: not a pytorch-grad-cam class; the probe pass runs
    ``lightning_i2x.igos.igos_probe_batch`` (imported when used: igos builds on this module)."""

    method = "igos"


class IGOSPlusPlusMethod(IGOSMethod):
    """Stands for cam="igos++" in ``CAM_METHODS`` (see ``IGOSMethod``)."""

    method = "igos++"


CAM_METHODS: dict[str, type] = {
    "gradcam": pgc.GradCAM,
    "hirescam": pgc.HiResCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
    "layercam": pgc.LayerCAM,
    "scorecam": pgc.ScoreCAM,
    "ablationcam": pgc.AblationCAM,
    "fullgrad": pgc.FullGrad,
    "gradcamelementwise": pgc.GradCAMElementWise,
    "kpcacam": pgc.KPCA_CAM,
    "igos": IGOSMethod,  # optimised masks (lightning_i2x.igos), at the authors' defaults
    "igos++": IGOSPlusPlusMethod,
}

ForwardFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def default_forward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images)


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
def _grad_enabled_full_precision(device: torch.device):
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


def _model_input(images: torch.Tensor, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
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
    device = next(model.parameters()).device
    with graph_from_layer(layer, device) as captured:
        logits = forward_fn(model, _model_input(images, model, device))
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


def library_cam_class(name: str) -> type:
    """The pytorch-grad-cam class for ``name``, made to return maps at feature resolution."""
    base = CAM_METHODS[name]

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
    device = next(model.parameters()).device
    cam_class = library_cam_class(method)
    uses_gradients, input_gradient = _library_needs(CAM_METHODS[method])
    if input_gradient:  # FullGrad: gradients down to the input, the whole graph is needed
        context = _grad_enabled_full_precision(device)
    elif uses_gradients:  # a graph from the target layer on, as in native_gradcam
        context = graph_from_layer(layer, device)
    else:  # gradient-free methods: no graph at all
        context = _no_grad_full_precision(device)
    with preserved_training_state(model), context:
        cam = cam_class(model=model, target_layers=[layer], reshape_transform=reshape_transform)
        try:
            x = _model_input(images, model, device)
            cam_targets = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
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


def probe_batches(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    cam: str = "gradcam",
    cam_target: str = "label",
    batch_size: int = 256,
    reshape_transform: Callable | None = None,
    forward_fn: ForwardFn | None = None,
    normalise: bool = True,
) -> Iterator[ProbeBatch]:
    """Stream the probe set through the model in batches (memory bounded by the batch size), in
    eval mode whatever mode the model was in, restored afterwards. A ``torch.compile``d model runs
    eagerly here: a compiled graph hides the target layer's output from hooks and autograd."""
    forward_fn = forward_fn or default_forward
    with evaluation_mode(model), torch.compiler.set_stance("force_eager"):
        yield from _probe_batches(model, layer, images, labels, cam, cam_target, batch_size, reshape_transform, forward_fn, normalise)


def _probe_batches(model, layer, images, labels, cam, cam_target, batch_size, reshape_transform, forward_fn, normalise):
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        targets = labels[start : start + batch_size] if cam_target == "label" else None
        if cam == "gradcam":
            yield native_gradcam(model, layer, x, targets, reshape_transform=reshape_transform, forward_fn=forward_fn, normalise=normalise)
        elif isinstance(CAM_METHODS.get(cam), type) and issubclass(CAM_METHODS[cam], IGOSMethod):
            from .igos import igos_probe_batch

            yield igos_probe_batch(model, layer, x, targets, method=CAM_METHODS[cam].method, reshape_transform=reshape_transform,
                                   forward_fn=forward_fn, normalise=normalise)
        else:
            if forward_fn is not default_forward:
                raise ValueError("forward_fn is only supported with cam='gradcam' (pytorch-grad-cam calls model(x))")
            yield library_cam(model, layer, x, targets, method=cam, reshape_transform=reshape_transform)
