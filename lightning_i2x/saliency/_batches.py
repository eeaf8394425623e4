"""Step 2: one pass over the probe set gives activations, saliency maps and confidences, in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .._model import ForwardFn, default_forward, evaluation_mode
from ._gradcam import ProbeBatch, native_gradcam
from ._igos import igos_probe_batch
from ._library import library_cam
from ._registry import saliency_method

__all__ = ["probe_batches"]


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
    igos: dict | None = None,
) -> Iterator[ProbeBatch]:
    """Stream the probe set through the model in batches (memory bounded by the batch size), in
    eval mode whatever mode the model was in, restored afterwards. A ``torch.compile``d model runs
    eagerly here: a compiled graph hides the target layer's output from hooks and autograd.
    ``igos``: the keyword arguments of ``igos_probe_batch`` for ``cam="igos"`` / ``"igos++"``
    (``IGOSOptions.igos_kwargs()``); None: its defaults."""
    forward_fn = forward_fn or default_forward
    with evaluation_mode(model), torch.compiler.set_stance("force_eager"):
        yield from _probe_batches(model, layer, images, labels, cam, cam_target, batch_size, reshape_transform, forward_fn, normalise,
                                  dict(igos or {}))


def _probe_batches(model, layer, images, labels, cam, cam_target, batch_size, reshape_transform, forward_fn, normalise, igos):
    method = saliency_method(cam)
    if forward_fn is not default_forward and not method.takes_forward_fn:
        raise ValueError(f"forward_fn is not supported with cam={cam!r} (pytorch-grad-cam calls model(x)); use cam='gradcam', 'igos' or 'igos++'")
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        targets = labels[start : start + batch_size] if cam_target == "label" else None
        if method.kind == "native":
            yield native_gradcam(model, layer, x, targets, reshape_transform=reshape_transform, forward_fn=forward_fn, normalise=normalise)
        elif method.kind == "igos":
            yield igos_probe_batch(model, layer, x, targets, method=cam, reshape_transform=reshape_transform,
                                   forward_fn=forward_fn, normalise=normalise, **igos)
        else:
            yield library_cam(model, layer, x, targets, method=cam, reshape_transform=reshape_transform)
