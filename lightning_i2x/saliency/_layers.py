"""Find and check the target layer with one dry forward that leaves the model as it was.

Vision transformers need no hand work: for torchvision's ``VisionTransformer`` and
``SwinTransformer`` (and timm's ViT and Swin families) ``target_layer=None`` picks the layer
pytorch-grad-cam's "vision_transformers" tutorial recommends (the last block's first LayerNorm:
the class token alone reaches the head after the last block, so the patch tokens' gradient there
is zero) and the token-to-map reshape is inferred from the layer's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .._model import model_device, preserved_rng, preserved_training_state

__all__ = ["TargetLayer", "TokensToMap", "infer_reshape_transform", "recommended_target_layer", "resolve_target_layer"]


@dataclass
class TargetLayer:
    name: str
    module: nn.Module
    feature_shape: tuple[int, int, int]  # (d, h, w) after reshape_transform
    num_classes: int
    reshape_transform: Callable | None = None  # the user's, else the inferred one; pass it to the CAM


@dataclass(frozen=True)
class TokensToMap:
    """pytorch-grad-cam's reshape_transform for transformers, as a picklable callable:
    (N, prefix_tokens + height*width, C) tokens (class/register tokens dropped), or with
    ``channels_last`` an (N, height, width, C) map as Swin's, to an (N, C, height, width) map."""

    height: int
    width: int
    prefix_tokens: int = 0
    channels_last: bool = False

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            if tensor.ndim != 4:
                raise ValueError(f"expected an (N, H, W, C) map, got shape {tuple(tensor.shape)}")
            return tensor.permute(0, 3, 1, 2)
        if tensor.ndim != 3 or tensor.shape[1] != self.prefix_tokens + self.height * self.width:
            raise ValueError(
                f"expected (N, {self.prefix_tokens} + {self.height}x{self.width}, C) tokens, got shape {tuple(tensor.shape)}: "
                "the probe images must have the size the reshape was inferred at"
            )
        n, _, c = tensor.shape
        return tensor[:, self.prefix_tokens :, :].reshape(n, self.height, self.width, c).permute(0, 3, 1, 2)


def _family(module: nn.Module) -> str | None:
    """'vit' or 'swin' for the transformer classes whose layout is known, else None."""
    from torchvision.models import SwinTransformer, VisionTransformer

    if isinstance(module, VisionTransformer):
        return "vit"
    if isinstance(module, SwinTransformer):
        return "swin"
    cls = type(module)
    if cls.__module__.startswith("timm."):  # timm is optional: recognised by its module, never imported
        if hasattr(module, "blocks") and hasattr(module, "patch_embed") and hasattr(module, "num_prefix_tokens"):
            return "timm_vit"
        if "swin" in cls.__name__.lower() and hasattr(module, "layers"):
            return "timm_swin"
    return None


def _transformers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    return [(name, m, fam) for name, m in model.named_modules() if (fam := _family(m)) is not None]


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}.{rest}" if prefix else rest


def _last(seq: nn.Module) -> str:
    return list(dict(seq.named_children()))[-1]


def recommended_target_layer(model: nn.Module) -> str | None:
    """The dotted name of pytorch-grad-cam's recommended layer in the model's (first) known
    transformer: torchvision ViT ``encoder.layers[-1].ln_1``, torchvision Swin
    ``features[-1][-1].norm1``, timm ViT ``blocks[-1].norm1``, timm Swin
    ``layers[-1].blocks[-1].norm1``; None when the model holds none of them."""
    found = _transformers(model)
    if not found:
        return None
    prefix, m, fam = found[0]
    if fam == "vit":
        return _join(prefix, f"encoder.layers.{_last(m.encoder.layers)}.ln_1")
    if fam == "swin":
        stage = _last(m.features)
        return _join(prefix, f"features.{stage}.{_last(m.features.get_submodule(stage))}.norm1")
    if fam == "timm_vit":
        return _join(prefix, f"blocks.{_last(m.blocks)}.norm1")
    stage = _last(m.layers)
    return _join(prefix, f"layers.{stage}.blocks.{_last(m.layers.get_submodule(stage).blocks)}.norm1")


def _grid(tokens: int, preferred: tuple[int, int] | None) -> tuple[int, int] | None:
    if preferred is not None and preferred[0] * preferred[1] == tokens:
        return preferred
    side = int(round(tokens**0.5))
    return (side, side) if side * side == tokens else None


def infer_reshape_transform(model: nn.Module, layer_name: str, sample_output: object) -> Callable | None:
    """The token-to-map reshape for ``layer_name`` when it lies in a known transformer of
    ``model`` and its output (one dry forward's) is a token sequence or a channels-last map: ViT
    drops its class (and register) tokens and lays the rest on the patch grid; Swin's (N, H, W, C)
    outputs are permuted. None when nothing is known about the layer."""
    if not isinstance(sample_output, torch.Tensor):
        return None
    enclosing = [(p, m, f) for p, m, f in _transformers(model) if not p or layer_name == p or layer_name.startswith(p + ".")]
    if not enclosing:
        return None
    _, m, fam = max(enclosing, key=lambda t: len(t[0]))
    out = sample_output
    if fam in ("swin", "timm_swin"):
        if out.ndim == 4:
            return TokensToMap(int(out.shape[1]), int(out.shape[2]), channels_last=True)
        if out.ndim == 3 and (grid := _grid(int(out.shape[1]), None)) is not None:
            return TokensToMap(*grid)
        return None
    if out.ndim != 3:
        return None
    if fam == "vit":
        prefix = 1  # torchvision's ViT has one class token
        side = int(m.image_size) // int(m.patch_size)
        preferred = (side, side)
    else:
        prefix = int(getattr(m, "num_prefix_tokens", 1))
        size = getattr(getattr(m, "patch_embed", None), "grid_size", None)
        preferred = tuple(int(s) for s in size) if size is not None else None
    grid = _grid(int(out.shape[1]) - prefix, preferred)
    return None if grid is None else TokensToMap(grid[0], grid[1], prefix_tokens=prefix)


def resolve_target_layer(
    model: nn.Module,
    target_layer: str | nn.Module | None,
    sample: torch.Tensor,
    *,
    forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    reshape_transform: Callable | None = None,
) -> TargetLayer:
    """Resolve ``target_layer`` (dotted path, module or None = pytorch-grad-cam's recommended layer
    of a known vision transformer, else the last module whose output is a 4-D map with more than
    one location, so global pools are skipped) and check that it yields a feature map and the
    model yields (N, M) scores. Without ``reshape_transform``, a transformer layer's token-to-map
    reshape is inferred (``infer_reshape_transform``); the one in effect is returned in
    ``TargetLayer.reshape_transform``."""
    names = {m: n for n, m in model.named_modules() if n}
    outputs: list[tuple[str, object]] = []
    handles = [m.register_forward_hook(lambda mod, _i, out: outputs.append((names[mod], out))) for m in names]
    device = model_device(model)
    try:
        with preserved_rng(), preserved_training_state(model), torch.no_grad(), torch.compiler.set_stance("force_eager"):
            model.eval()  # a dry forward in train mode would move BatchNorm statistics
            logits = forward_fn(model, sample.to(device))
    finally:
        for h in handles:
            h.remove()
    seen = dict(outputs)
    feature_maps = [n for n, out in outputs if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[2] * out.shape[3] > 1]
    recommended = recommended_target_layer(model) if target_layer is None else None
    if recommended is not None:
        name = recommended
    elif target_layer is None:
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
    if reshape_transform is None:  # a user's own reshape_transform wins
        reshape_transform = infer_reshape_transform(model, name, out)
    if reshape_transform is not None:
        out = reshape_transform(out)
    if out.ndim != 4:
        hint = "" if reshape_transform is not None else "; for token sequences pass reshape_transform"
        candidates = ", ".join(repr(n) for n in feature_maps[-6:]) or "none"
        raise ValueError(f"target_layer {name!r} outputs shape {tuple(out.shape)}, not a feature map (N, C, H, W){hint}. Feature-map layers: {candidates}")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model's forward must return class scores (N, M), got {shape}; pass forward_fn to adapt it")
    return TargetLayer(name, module, tuple(int(s) for s in out.shape[1:]), int(logits.shape[1]), reshape_transform)
