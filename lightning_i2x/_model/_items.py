"""Reading ``(image, label, ...)`` items and batches from a user's Dataset or DataLoader."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["split_item", "split_batch"]


def split_item(item: Any, where: str, purpose: str = "the probe") -> tuple[torch.Tensor, list]:
    """``(image, [label, ...])`` of one item; a clear TypeError naming ``where`` and what
    ``purpose`` needs when the item is a dict, too short or not a tensor image."""
    if isinstance(item, dict):
        raise TypeError(f"{where} yields a dict; {purpose} needs (image, label) pairs: wrap it to return a tuple")
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(f"{where} must yield (image, label) pairs, got {type(item).__name__}")
    image = item[0]
    if not isinstance(image, torch.Tensor):
        try:
            image = torch.as_tensor(image)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where} yields images of type {type(item[0]).__name__}; {purpose} needs tensors (add ToTensor)") from None
    return image, list(item[1:])


def split_batch(batch: Any, where: str, purpose: str = "fine-tuning") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (B, ...), labels (B,) int64)`` of one batch, checked."""
    x, rest = split_item(batch, where, purpose)
    y = torch.as_tensor(rest[0])
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{where} must yield (images (B, ...), labels (B,) integer) batches, got labels {tuple(y.shape)} {y.dtype}")
    return x, y.long()
