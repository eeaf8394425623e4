"""The run's target layer in the model being fine-tuned, checked against the run: the search
compares that layer's features with the run's prototypes, so a model with other feature maps or
other classes would be searched meaninglessly."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._model import ForwardFn, default_forward
from ..saliency import resolve_target_layer
from ..store import I2XRun

__all__ = ["run_target_layer"]


def run_target_layer(model: torch.nn.Module, run: I2XRun, sample: torch.Tensor, *, forward_fn: ForwardFn | None = None,
                     reshape_transform: Callable | None = None) -> torch.nn.Module:
    """The submodule at the run's recorded target layer (``sample``: a batch of two training
    images); ValueError when the model's feature maps or classes differ from the run's."""
    name = run.config.target_layer
    try:
        layer = resolve_target_layer(model, name, sample, forward_fn=forward_fn or default_forward, reshape_transform=reshape_transform)
    except ValueError as e:
        raise ValueError(f"the model does not match the run's target layer {name!r}: {e}") from None
    want = (run.prototypes.feature_dim, *run.feature_shape)
    if tuple(layer.feature_shape) != want:
        raise ValueError(
            f"the model's target layer {name!r} gives feature maps {tuple(layer.feature_shape)} (d, h, w) "
            f"but the run's prototypes were fitted on {want}: fine-tune the model the run was recorded from"
        )
    if layer.num_classes != run.num_classes:
        raise ValueError(f"the model has {layer.num_classes} classes, the run {run.num_classes}")
    return layer.module
