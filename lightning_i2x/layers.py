"""Find and check the target layer with one dry forward that leaves the model as it was."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .guards import preserved_rng, preserved_training_state

__all__ = ["TargetLayer", "resolve_target_layer"]


@dataclass
class TargetLayer:
    name: str
    module: nn.Module
    feature_shape: tuple[int, int, int]  # (d, h, w) after reshape_transform
    num_classes: int


def resolve_target_layer(
    model: nn.Module,
    target_layer: str | nn.Module | None,
    sample: torch.Tensor,
    *,
    forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    reshape_transform: Callable | None = None,
) -> TargetLayer:
    """Resolve ``target_layer`` (dotted path, module or None = the last module whose output is a
    4-D map with more than one location, so global pools are skipped) and check that it yields a feature map and the model yields (N, M) scores."""
    names = {m: n for n, m in model.named_modules() if n}
    outputs: list[tuple[str, object]] = []
    handles = [m.register_forward_hook(lambda mod, _i, out: outputs.append((names[mod], out))) for m in names]
    device = next(model.parameters()).device
    try:
        with preserved_rng(), preserved_training_state(model), torch.no_grad(), torch.compiler.set_stance("force_eager"):
            model.eval()  # a dry forward in train mode would move BatchNorm statistics
            logits = forward_fn(model, sample.to(device))
    finally:
        for h in handles:
            h.remove()
    seen = dict(outputs)
    feature_maps = [n for n, out in outputs if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[2] * out.shape[3] > 1]
    if target_layer is None:
        if reshape_transform is not None:
            raise ValueError("with reshape_transform, name the target_layer explicitly (e.g. 'blocks.11.norm1')")
        if not feature_maps:
            raise ValueError("the model has no module with a 4-D (N, C, H, W) output; name target_layer and pass reshape_transform")
        name = feature_maps[-1]
    elif isinstance(target_layer, nn.Module):
        if target_layer not in names:
            raise ValueError(f"target_layer {type(target_layer).__name__} is not a submodule of the model")
        name = names[target_layer]
    else:
        name = str(target_layer)
        try:
            model.get_submodule(name)
        except AttributeError:
            listed = ", ".join(repr(n) for n in feature_maps[-12:]) or "none"
            raise ValueError(f"target_layer {name!r} is not a module of the model; modules with feature-map outputs: {listed}") from None
    module = model.get_submodule(name)
    if name not in seen:
        raise ValueError(f"target_layer {name!r} does not run in the model's forward")
    out = seen[name]
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"target_layer {name!r} outputs {type(out).__name__}, not a tensor; choose a layer that returns one")
    if reshape_transform is not None:
        out = reshape_transform(out)
    if out.ndim != 4:
        hint = "" if reshape_transform is not None else "; for token sequences pass reshape_transform"
        candidates = ", ".join(repr(n) for n in feature_maps[-6:]) or "none"
        raise ValueError(f"target_layer {name!r} outputs shape {tuple(out.shape)}, not a feature map (N, C, H, W){hint}. Feature-map layers: {candidates}")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model's forward must return class scores (N, M), got {shape}; pass forward_fn to adapt it")
    return TargetLayer(name, module, tuple(int(s) for s in out.shape[1:]), int(logits.shape[1]))
