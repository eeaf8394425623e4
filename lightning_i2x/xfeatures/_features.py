"""The SRAE's input: the target layer's map averaged over its locations, and the class scores."""

from __future__ import annotations

import torch

from .._model import ForwardFn, evaluation_mode, forward, model_device, preserved_rng, preserved_training_state
from ..saliency import TargetLayer

__all__ = ["pooled_features", "pool_map"]


def pool_map(out: object, layer: TargetLayer) -> torch.Tensor:
    """The layer's (N, d, h, w) map (after its reshape) averaged over the locations: (N, d)."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise ValueError(f"target layer {layer.name!r} outputs {type(out).__name__}, not a floating-point tensor; "
                         "x-features need a layer whose output pools to one vector per image")
    if layer.reshape_transform is not None:
        out = layer.reshape_transform(out)
    if out.ndim != 4:
        raise ValueError(f"target layer {layer.name!r} outputs shape {tuple(out.shape)}, not a feature map (N, C, H, W) to pool; "
                         "choose a convolutional layer (or pass reshape_transform for tokens)")
    return out.float().mean(dim=(2, 3))


def pooled_features(model: torch.nn.Module, layer: TargetLayer, images: torch.Tensor, *, forward_fn: ForwardFn | None = None,
                    batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled target-layer features (N, d), class scores (N, M)) on the CPU, float32, in eval mode
    with no gradient; the model's modes, gradients and the RNG are left as they were."""
    captured: list[object] = []
    handle = layer.module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    device = model_device(model)
    feats, scores = [], []
    try:
        with preserved_rng(), preserved_training_state(model), evaluation_mode(model), torch.no_grad():
            for s in range(0, images.shape[0], batch_size):
                captured.clear()
                logits = forward(model, images[s : s + batch_size].to(device), forward_fn)
                if not captured:
                    raise ValueError(f"target layer {layer.name!r} did not run in the model's forward")
                feats.append(pool_map(captured[-1], layer).cpu())
                scores.append(logits.float().cpu())
    finally:
        handle.remove()
    return torch.cat(feats), torch.cat(scores)
