"""How the package calls a model: ``forward_fn(model, images) -> scores``, ``model(images)`` by default."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ForwardFn", "default_forward", "forward", "model_device"]

ForwardFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
"""``forward_fn(model, images) -> (B, M) scores``: for models whose ``forward`` needs more than images."""


def default_forward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images)


def forward(model: torch.nn.Module, images: torch.Tensor, forward_fn: ForwardFn | None = None) -> torch.Tensor:
    """``forward_fn(model, images)``, or ``model(images)`` when it is None."""
    return model(images) if forward_fn is None else forward_fn(model, images)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
