"""Turn what the user passes as a probe set into fixed tensors, once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._model import preserved_rng, split_item

__all__ = ["materialise_probe", "probe_fingerprint"]

_CHUNK_BYTES = 8 * 2**20  # images are checked and hashed this many bytes at a time


def _chunks(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """Consecutive slices of ``images`` (views, no copies) of about ``_CHUNK_BYTES`` each."""
    rows = max(1, _CHUNK_BYTES // max(1, images[:1].numel() * images.element_size()))
    return (images[s : s + rows] for s in range(0, images.shape[0], rows))


def _image_label(item: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    image, rest = split_item(item, where, "the probe")
    return image, torch.as_tensor(rest[0])


def materialise_probe(probe: Any) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """(images (N, C, H, W) float32 on the CPU, labels (N,) int64, class names or None) from a
    Dataset, a DataLoader or an (images, labels) pair. Read once, with the RNG state restored,
    so random transforms or a shuffling loader neither change the probe later nor move the
    training RNG."""
    classes = getattr(probe, "classes", None) or getattr(getattr(probe, "dataset", None), "classes", None)
    with preserved_rng(), torch.no_grad():
        if isinstance(probe, (tuple, list)) and len(probe) == 2 and not isinstance(probe[0], (tuple, list)):
            images, labels = torch.as_tensor(probe[0]), torch.as_tensor(probe[1])
        elif isinstance(probe, DataLoader):
            parts = [_image_label(batch, "the probe DataLoader") for batch in probe]
            images = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0)
            labels = torch.cat([p[1].reshape(-1) for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
        elif isinstance(probe, Dataset) or hasattr(probe, "__getitem__") and hasattr(probe, "__len__"):
            parts = [_image_label(probe[i], "the probe Dataset") for i in range(len(probe))]
            images = torch.stack([p[0] for p in parts]) if parts else torch.zeros(0)
            labels = torch.stack([p[1].reshape(()) for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
        else:
            raise TypeError(f"probe must be a Dataset, a DataLoader or an (images, labels) pair, got {type(probe).__name__}")
    if images.shape[0] == 0:
        raise ValueError("the probe set is empty: pass at least one (image, label) pair (a few hundred is typical)")
    if images.ndim != 4:
        raise ValueError(f"probe images must be (N, C, H, W), got shape {tuple(images.shape)}: add the channel axis")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"probe labels must be (N,) = ({images.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"probe labels must be integer class indices, got dtype {labels.dtype}")
    images = images.float().contiguous()  # no copy when the probe already is float32 and contiguous
    if not all(torch.isfinite(chunk).all() for chunk in _chunks(images)):
        raise ValueError("probe images contain NaN or inf")
    names = [str(c) for c in classes] if classes is not None else None
    return images, labels.to(torch.int64), names


def probe_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A content hash of the probe set, to tell whether a run was recorded on the same probe."""
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    for chunk in _chunks(images):  # a large probe is never copied whole
        h.update(np.ascontiguousarray(chunk.numpy()).data)
    h.update(np.ascontiguousarray(labels.numpy()).data)
    return h.hexdigest()[:16]
