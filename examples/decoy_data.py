"""Decoy MNIST and Decoy Fashion-MNIST: a planted shortcut with known ground truth (not part of
the library).

Ross, Hughes and Doshi-Velez (2017), "Right for the Right Reasons": every image gets a 4x4 swatch
in one of its four corners (corner drawn at random). In the training distribution the swatch's
shade encodes the label, ``255 - 25 * y`` on the 0..255 scale, so a model can reach full training
accuracy from the swatch alone; in the test distribution the shade is ``255 - 25 * r`` for a random
digit ``r``, so a model that took the shortcut fails there. The same construction on Fashion-MNIST
gives a second data set whose real features (garments filling most of the image, reaching its
borders) are harder to tell from the decoy than MNIST's centred digits.

The swatch masks returned beside each data set are the ground truth: for evaluation and for the
RRR oracle only, never for the method under test.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import TensorDataset

from demo_data import load_mnist

__all__ = ["SWATCH", "MULT", "add_decoy", "load_decoy"]

SWATCH = 4  # side of the swatch in pixels
MULT = 25  # shade step per class on the 0..255 scale


def add_decoy(
    images: torch.Tensor, labels: torch.Tensor, *, train: bool, seed: int = 0, mult: int = MULT, num_classes: int = 10
) -> tuple[torch.Tensor, np.ndarray]:
    """A copy of the (N, 1, H, W) ``images`` (normalised as ``load_mnist``: 0..255 mapped to
    [-1, 1]) with a swatch in a random corner of each, and the (N, H, W) bool swatch masks.

    ``train``: shade ``255 - mult * label``; otherwise ``255 - mult * r`` with ``r`` drawn
    uniformly from the ``num_classes`` digits. Corners and ``r`` come from a private generator
    seeded by ``(seed, train)``: the same call gives the same images.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be a (N, 1, H, W) tensor, got {type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    y = torch.as_tensor(labels).reshape(-1)
    n, _, h, w = images.shape
    if y.shape[0] != n:
        raise ValueError(f"{n} images but {y.shape[0]} labels")
    if h < SWATCH or w < SWATCH:
        raise ValueError(f"images of {h}x{w} pixels are smaller than the {SWATCH}x{SWATCH} swatch")
    rng = np.random.default_rng([int(seed), int(bool(train))])
    top = rng.random(n) < 0.5
    left = rng.random(n) < 0.5
    digit = y.numpy().astype(np.int64) if train else rng.integers(0, num_classes, size=n)
    shade = (255.0 - mult * digit) / 255.0  # 0..1 scale
    value = torch.as_tensor((shade - 0.5) / 0.5, dtype=images.dtype)  # the loader's normalisation
    masks = np.zeros((n, h, w), dtype=bool)
    rows = np.where(top[:, None], np.arange(SWATCH)[None, :], np.arange(h - SWATCH, h)[None, :])
    cols = np.where(left[:, None], np.arange(SWATCH)[None, :], np.arange(w - SWATCH, w)[None, :])
    masks[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = True
    out = images.clone()
    m = torch.from_numpy(masks).unsqueeze(1)
    out = torch.where(m, value.view(n, 1, 1, 1), out)
    return out, masks


def load_decoy(
    train: bool,
    data_dir: str | os.PathLike | None = None,
    name: str = "mnist",
    *,
    seed: int = 0,
    indices: torch.Tensor | np.ndarray | None = None,
    decoy_train: bool | None = None,
) -> tuple[TensorDataset, np.ndarray]:
    """Decoy MNIST (``name="mnist"``) or Decoy Fashion-MNIST (``"fashion-mnist"``) from the real
    data: a TensorDataset (``classes`` set) and the (N, 28, 28) bool swatch masks.

    ``train`` picks the split; ``indices`` a subset of it (in that order). ``decoy_train`` picks
    the shade rule (label-coded or random), default that of the split: the probe of a decoy run
    is held-out *training-split* images with label-coded shades.
    """
    base = load_mnist(train, data_dir=data_dir, name=name)
    x, y = base.tensors
    if indices is not None:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        x, y = x[idx], y[idx]
    rule = train if decoy_train is None else decoy_train
    xd, masks = add_decoy(x, y, train=rule, seed=seed)
    out = TensorDataset(xd, y.clone())
    out.classes = list(base.classes)
    return out, masks
