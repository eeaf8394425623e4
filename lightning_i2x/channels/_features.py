"""The frozen model's side: its target-layer features cached once, and the avg-pool + linear head
that EPIC's identity needs, found in the model and checked on its own outputs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._model import ForwardFn, evaluation_mode, forward, model_device, preserved_rng, preserved_training_state, split_batch, split_item
from ..saliency import TargetLayer

__all__ = ["CachedFeatures", "cache_features", "find_linear_head", "channel_head", "LinearHead", "HeadMismatchError"]


class HeadMismatchError(ValueError):
    """The model's head after the target layer is not a global average pool followed by one linear
    layer, so ``avg_pool(U Z) = U avg_pool(Z)`` cannot carry the head over unchanged."""


@dataclass(frozen=True)
class CachedFeatures:
    """One pass of the frozen model over a data set: the target layer's (N, D, h, w) features, the
    labels and the model's own (N, M) scores, float32 on the CPU."""

    features: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def accuracy(self) -> float:
        """The model's own accuracy on these images."""
        return float((self.logits.argmax(1) == self.labels).float().mean()) if len(self) else float("nan")


def _batches(data: Any, batch_size: int, where: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of a DataLoader, a Dataset or an (images, labels) pair."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data[0], torch.as_tensor(data[1])
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{where}: labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        for s in range(0, images.shape[0], batch_size):
            yield images[s : s + batch_size], labels[s : s + batch_size].long()
    elif isinstance(data, DataLoader):
        for batch in data:
            yield split_batch(batch, where, "InfoDisent's feature cache")
    elif isinstance(data, Dataset) or hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        for s in range(0, len(data), batch_size):
            items = [split_item(data[i], where, "InfoDisent's feature cache") for i in range(s, min(s + batch_size, len(data)))]
            yield torch.stack([x for x, _ in items]), torch.as_tensor([int(r[0]) for _, r in items])
    else:
        raise TypeError(f"{where} must be a Dataset, a DataLoader or an (images, labels) pair, got {type(data).__name__}")


def cache_features(model: nn.Module, layer: TargetLayer, data: Any, *, batch_size: int = 256, forward_fn: ForwardFn | None = None,
                   where: str = "data") -> CachedFeatures:
    """Run the frozen ``model`` once over ``data`` (eval mode, no gradients; modes, gradients and
    RNG put back as they were) and keep the target layer's features (after the layer's
    ``reshape_transform``) with the model's scores. The model's weights are only read."""
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        out = layer.reshape_transform(output) if layer.reshape_transform is not None else output
        captured.append(out.detach().float().cpu())

    feats, labels, logits = [], [], []
    device = model_device(model)
    handle = layer.module.register_forward_hook(hook)
    try:
        with preserved_rng(), preserved_training_state(model), evaluation_mode(model), torch.no_grad():
            for x, y in _batches(data, batch_size, where):
                captured.clear()
                scores = forward(model, x.to(device), forward_fn)
                if not captured:
                    raise ValueError(f"target layer {layer.name!r} did not run in the model's forward")
                feats.append(captured[-1])
                labels.append(y.reshape(-1).long().cpu())
                logits.append(scores.detach().float().cpu())
    finally:
        handle.remove()
    if not feats:
        raise ValueError(f"{where} is empty: pass at least one (image, label) pair")
    return CachedFeatures(torch.cat(feats), torch.cat(labels), torch.cat(logits))


@dataclass(frozen=True)
class LinearHead:
    """The model's ``nn.Linear`` that reads the global average of the target layer's channels:
    ``logits = weight @ avg_pool(Z) + bias``. ``read`` copies its current weights (the model keeps
    training; the copy is what a record uses)."""

    name: str
    module: nn.Linear

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        w = self.module.weight.detach().float().cpu().numpy().copy()
        b = self.module.bias.detach().float().cpu().numpy().copy() if self.module.bias is not None else np.zeros(w.shape[0], np.float32)
        return w, b


def find_linear_head(model: nn.Module, cached: CachedFeatures, *, tolerance: float = 1e-4) -> LinearHead:
    """The ``nn.Linear`` of ``model`` whose map of the features' global average reproduces the
    model's scores on ``cached`` (to ``tolerance`` relative to the scores' scale). Raises
    ``HeadMismatchError`` saying what was found when none does (a flatten head, a head with more
    layers, a transformer's class token): EPIC keeps predictions only for avg-pool + linear."""
    d = int(cached.features.shape[1])
    m = int(cached.logits.shape[1])
    pooled = cached.features.mean(dim=(2, 3))
    scale = float(cached.logits.abs().max()) + 1e-12
    candidates = [(n, mod) for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and mod.out_features == m]
    for name, lin in candidates:
        if lin.in_features != d:
            continue
        w, b = LinearHead(name, lin).read()
        err = float((pooled @ torch.from_numpy(w).T + torch.from_numpy(b) - cached.logits).abs().max()) / scale
        if err <= tolerance:
            return LinearHead(name, lin)
    found = ", ".join(f"{n!r} ({mod.in_features} -> {mod.out_features})" for n, mod in candidates) or "no nn.Linear with that output"
    h, w_ = cached.features.shape[2:]
    raise HeadMismatchError(
        f"the model's head is not a global average pool + one linear layer over the target layer's {d} channels "
        f"(looked for an nn.Linear {d} -> {m} that reproduces the scores from the channels' means; found {found}; "
        f"a flatten head reads {d}x{h}x{w_} = {d * h * w_} inputs). The channel source and EPIC need that head, since only then "
        "avg_pool(U Z) = U avg_pool(Z) keeps every prediction: choose the target layer right before the global pool, "
        "or fit a new head with fit_infodisent, which works on any model"
    )


def channel_head(model: nn.Module, layer: TargetLayer, images: torch.Tensor, labels: torch.Tensor, num_prototypes: int,
                 forward_fn: ForwardFn | None = None, *, sample: int = 32) -> LinearHead:
    """The head the channel prototype source carries over, checked before training: K at most the
    layer's D channels, and an avg-pool + linear head (``find_linear_head`` on ``sample`` probe
    images). Raises ValueError / ``HeadMismatchError`` saying what to change."""
    d = layer.feature_shape[0]
    if num_prototypes > d:
        raise ValueError(f"PrototypeOptions(source='channels') makes one prototype per channel: num_prototypes={num_prototypes} "
                         f"exceeds the {d} channels of {layer.name!r}; lower num_prototypes to at most {d} or use source='kmeans'")
    cached = cache_features(model, layer, (images[:sample], labels[:sample]), forward_fn=forward_fn, where="the probe")
    return find_linear_head(model, cached)
