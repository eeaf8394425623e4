"""``fit_infodisent``: the InfoDisent head fitted on a trained model's target layer, the backbone
frozen and its features cached once, with its accuracy beside the model's own."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._core import check_int, check_number
from .._model import ForwardFn, default_forward, preserved_rng
from ..saliency import TargetLayer, resolve_target_layer
from ._features import CachedFeatures, HeadMismatchError, cache_features, find_linear_head
from ._head import InfoDisentHead, unmix

__all__ = ["InfoDisentResult", "ChannelExplanation", "fit_infodisent", "sample_images"]


@dataclass(frozen=True)
class ChannelExplanation:
    """One image's prediction by the head: ``contributions`` (M, D) = ``W[c, k] v_k`` and ``bias``
    (M,), so ``logits = contributions.sum(1) + bias`` exactly; ``peaks`` (D,) the flat location of
    each unmixed channel's greatest value (the patch shown for it)."""

    logits: torch.Tensor
    contributions: torch.Tensor
    bias: torch.Tensor
    peaks: torch.Tensor

    def top_channels(self, target: int, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` channels with the largest contribution to class ``target``'s logit."""
        c = self.contributions[target]
        order = torch.argsort(c, descending=True)[:k]
        return [(int(i), float(c[i])) for i in order]


@dataclass
class InfoDisentResult:
    """What ``fit_infodisent`` returns: the trained ``head`` (on the target layer's features), the
    ``layer`` it reads, its validation ``accuracy`` beside the model's own (``backbone_accuracy``),
    the loss per epoch, and the cost: images passed through the frozen model (once each) and
    the seconds of caching and of training."""

    head: InfoDisentHead
    layer: TargetLayer
    accuracy: float
    backbone_accuracy: float
    history: list[float]
    forward_images: int
    cache_seconds: float
    train_seconds: float
    train_features: CachedFeatures = field(repr=False)
    val_features: CachedFeatures = field(repr=False)

    def explain(self, features: torch.Tensor) -> list[ChannelExplanation]:
        """Per image of (N, D, h, w) target-layer features: the logits as contributions plus bias."""
        with torch.no_grad():
            contrib = self.head.contributions(features)
            peaks = unmix(self.head.rotation, features).flatten(2).argmax(-1)
            bias = self.head.bias.detach()
            return [ChannelExplanation(contrib[i].sum(1) + bias, contrib[i], bias, peaks[i]) for i in range(features.shape[0])]


def sample_images(data: Any) -> torch.Tensor:
    """Two images of ``data`` for the target layer's dry forward."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0][:2]
    from ._features import _batches

    for x, _ in _batches(data, 2, "train"):
        return x[:2]
    raise ValueError("train is empty: pass at least one (image, label) pair")


def fit_infodisent(model: nn.Module, target_layer: str | nn.Module | None, train: Any, val: Any, *, epochs: int = 10,
                   batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-5, temperature: float = 0.1,
                   init_from_model: bool = True, seed: int = 0, cache_batch_size: int = 256, forward_fn: ForwardFn | None = None,
                   reshape_transform=None) -> InfoDisentResult:
    """Fit InfoDisent's head on ``model``'s ``target_layer`` (a dotted name, a module or None for
    the last feature map): the frozen model runs once over ``train`` and ``val`` (Datasets,
    DataLoaders or (images, labels) pairs; the model is only read, its modes, gradients and the
    RNG put back), then the head trains ``epochs`` epochs on the cached tensors. With
    ``init_from_model`` and an avg-pool + linear head, the weights start at the model's head's,
    clamped to >= 0; otherwise at small positive values."""
    check_int("fit_infodisent", "epochs", epochs, low=0)
    check_int("fit_infodisent", "batch_size", batch_size)
    check_number("fit_infodisent", "lr", lr, strict=True)
    check_number("fit_infodisent", "weight_decay", weight_decay)
    check_number("fit_infodisent", "temperature", temperature, strict=True)
    fwd = forward_fn or default_forward
    layer = resolve_target_layer(model, target_layer, sample_images(train), forward_fn=fwd, reshape_transform=reshape_transform)
    start = time.perf_counter()
    tr = cache_features(model, layer, train, batch_size=cache_batch_size, forward_fn=forward_fn, where="train")
    va = cache_features(model, layer, val, batch_size=cache_batch_size, forward_fn=forward_fn, where="val")
    cache_seconds = time.perf_counter() - start
    d, m = int(tr.features.shape[1]), int(tr.logits.shape[1])
    if int(tr.labels.max()) >= m or int(tr.labels.min()) < 0:
        raise ValueError(f"train labels must lie in the model's {m} classes [0, {m})")
    init = None
    if init_from_model:
        try:
            init = torch.from_numpy(find_linear_head(model, tr).read()[0])
        except HeadMismatchError:
            init = None  # any head works for InfoDisent: it trains its own weights
    scale = float(tr.features.std()) or 1.0
    with preserved_rng():
        torch.manual_seed(seed)
        head = InfoDisentHead(d, m, lr=lr, weight_decay=weight_decay, temperature=temperature, scale=scale, init_weight=init, seed=seed)
        start = time.perf_counter()
        history = head.train_on(tr.features, tr.labels, epochs=epochs, batch_size=batch_size, seed=seed)
        train_seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = float((head(va.features).argmax(1) == va.labels).float().mean())
    return InfoDisentResult(head, layer, accuracy, va.accuracy, history, len(tr) + len(va), cache_seconds, train_seconds, tr, va)
