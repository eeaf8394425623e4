"""``XFeatureExplainer``: a few faithful concepts per class of a trained classifier (XNN's x-features).

For each chosen class c, an SRAE maps the pooled target-layer features of the probe images to
n_x x-features whose contributions (x-feature times head weight) sum, with the head's bias, to
the network's score for c. Per class it keeps n_x, the held-out R^2 of that reconstructed score,
each x-feature's top probe images and their GradCAM maps, and every image's contributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._core import check_int
from .._model import ForwardFn, default_forward
from ..saliency import TargetLayer, resolve_target_layer
from ._features import pooled_features
from ._fit import FittedSRAE, fit_srae
from ._panel import XFeaturePanel
from ._saliency import xfeature_gradcam
from ._srae import SRAEOptions

__all__ = ["ClassXFeatures", "XFeatureExplainer"]


@dataclass(frozen=True)
class ClassXFeatures(XFeaturePanel):
    """One class's panel as fitted (``XFeaturePanel``'s fields), with the class's name and the
    fitted ``srae`` that maps pooled features to contributions."""

    class_name: str
    srae: FittedSRAE

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for a run attachment (no pickle)."""
        return {"class_index": np.asarray(self.class_index), "r2": np.asarray(self.r2), "contributions": self.contributions.astype(np.float32),
                "bias": np.asarray(self.bias), "score": self.score.astype(np.float32), "top_images": self.top_images.astype(np.int64),
                "saliency": self.saliency.astype(np.float16), "validation_n_x": np.asarray(list(self.srae.validation_scores), np.int64),
                "validation_scores": np.asarray(list(self.srae.validation_scores.values()), np.float64)}


class XFeatureExplainer:
    """Fit x-features for ``classes`` of a trained model (the model is never changed).

    classes: class indices to explain. n_x: x-features per class; None: chosen by the BIC-like
    score among 1..``max_n_x`` (``fit_srae``). options: how each SRAE trains. top_k: probe images
    shown per x-feature. held_out / validation: the probe shares kept out of fitting for the R^2 and
    for choosing n_x. split_seed: their draw.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
        >>> images = torch.randn(60, 1, 6, 6)
        >>> xf = XFeatureExplainer([0], n_x=2, options=SRAEOptions(epochs=2, pretrain_epochs=0)).fit(model, images)
        >>> xf[0].n_x, xf[0].contributions.shape, xf[0].saliency.shape
        (2, (60, 2), (2, 4, 6, 6))
    """

    def __init__(self, classes: Sequence[int], *, n_x: int | None = None, max_n_x: int = 5, options: SRAEOptions = SRAEOptions(),
                 top_k: int = 4, held_out: float = 0.2, validation: float = 0.2, split_seed: int = 0):
        if isinstance(classes, (int, np.integer)) or not isinstance(classes, Sequence) or not classes:
            raise ValueError(f"XFeatureExplainer.classes must be a non-empty list of class indices, got {classes!r}")
        for c in classes:
            check_int(self, "classes", c, low=0)
        if len(set(classes)) != len(classes):
            raise ValueError(f"XFeatureExplainer.classes must not repeat a class, got {list(classes)}")
        check_int(self, "n_x", n_x, optional=True)
        check_int(self, "max_n_x", max_n_x)
        check_int(self, "top_k", top_k)
        if not isinstance(options, SRAEOptions):
            raise TypeError(f"XFeatureExplainer.options must be an SRAEOptions, got {type(options).__name__}")
        self.classes = [int(c) for c in classes]
        self.n_x, self.max_n_x, self.options, self.top_k = n_x, max_n_x, options, top_k
        self.held_out, self.validation, self.split_seed = held_out, validation, split_seed
        self.layer: TargetLayer | None = None
        self.results: dict[int, ClassXFeatures] = {}

    def __getitem__(self, c: int) -> ClassXFeatures:
        if c not in self.results:
            raise KeyError(f"class {c} has no x-features; fitted classes: {sorted(self.results)}")
        return self.results[c]

    def fit(self, model: torch.nn.Module, images: torch.Tensor, *, target_layer: str | torch.nn.Module | TargetLayer | None = None,
            forward_fn: ForwardFn | None = None, class_names: Sequence[str] | None = None, batch_size: int = 256) -> XFeatureExplainer:
        """Pool the target layer's features of ``images`` (N, C, H, W), then fit each class's SRAE to
        the model's score (logit) for it. Raises ValueError for a class the model does not have or a
        layer with no poolable feature map."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] < 4:
            raise ValueError(f"XFeatureExplainer.fit needs images (N, C, H, W) with N >= 4, got {getattr(images, 'shape', type(images).__name__)}")
        fwd = forward_fn or default_forward
        layer = target_layer if isinstance(target_layer, TargetLayer) else resolve_target_layer(model, target_layer, images[:2], forward_fn=fwd)
        bad = [c for c in self.classes if c >= layer.num_classes]
        if bad:
            raise ValueError(f"XFeatureExplainer.classes {bad} are not classes of the model, which scores {layer.num_classes} classes (0..{layer.num_classes - 1})")
        self.layer = layer
        feats, scores = pooled_features(model, layer, images, forward_fn=forward_fn, batch_size=batch_size)
        x = feats.numpy().astype(np.float64)
        self.results = {}
        for c in self.classes:
            y = scores[:, c].numpy().astype(np.float64)
            srae = fit_srae(x, y, n_x=self.n_x, max_n_x=self.max_n_x, options=self.options, held_out=self.held_out,
                            validation=self.validation, split_seed=self.split_seed)
            contributions = srae.contributions(x)
            with torch.no_grad():
                z = srae.xfeatures(feats).numpy()
            top = np.argsort(-z, axis=0, kind="stable")[: self.top_k].T  # (n_x, k)
            maps = np.stack([xfeature_gradcam(model, layer, srae, images[top[k]], k, forward_fn=forward_fn).numpy() for k in range(srae.n_x)])
            name = str(class_names[c]) if class_names is not None else str(c)
            self.results[c] = ClassXFeatures(class_index=c, r2=srae.r2, contributions=contributions, bias=srae.bias, score=y, top_images=top,
                                             saliency=maps, class_name=name, srae=srae)
        return self

    @property
    def concept_classes(self) -> np.ndarray:
        """The class of each concept, in the order of ``contributions``' columns."""
        return np.concatenate([np.full(self.results[c].n_x, c, np.int64) for c in self.classes])

    def contributions(self, pooled: np.ndarray) -> np.ndarray:
        """Every fitted class's contributions of pooled features (..., N, d), concatenated over the
        classes: (..., N, sum n_x). The concept source of the I2X explanation."""
        p = np.asarray(pooled, dtype=np.float32)
        if not self.results:
            raise ValueError("XFeatureExplainer.contributions: call fit first")
        flat = p.reshape(-1, p.shape[-1])
        out = np.concatenate([self.results[c].srae.contributions(flat) for c in self.classes], axis=1)
        return out.reshape(*p.shape[:-1], out.shape[1])
