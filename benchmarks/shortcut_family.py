"""The benchmark family of benchmarks/shortcut.py: data sets, shortcuts and architectures (not part of the library).

Data (found through ``--data-dir`` / ``$I2X_DATA_DIR`` / ``shared/data`` beside the repository, never
copied): ``mnist``, ``fmnist`` (1 x 28 x 28) and ``cifar10`` (the CIFAR-10 subset, first 1000 images of
each batch: 3 x 32 x 32; report it as such). Shortcuts, each with its true (N, H, W) artifact mask
(for evaluation, the RRR oracle and nothing else):

- ``swatch``: Decoy MNIST's 4x4 corner swatch (Ross et al. 2017), shade coded by the label in training,
  random in the attacked test;
- ``tag``: a 3x3 bright tag at a random position along the image's edge on ``TAG_FRACTION`` of one
  class's (``TAG_CLASS``) training images only; the attacked test tags every image (a shortcut-taker
  calls them all ``TAG_CLASS``);
- ``cast``: a whole-image brightness cast, coded by the label in training, random in the attacked
  test: not localised (its mask is the whole image), a case the location-based suspects should not
  claim to find.

Architectures: ``flatten`` (SmallCNN's features, width 16, flatten + linear head), ``gap`` (the same
features, global-average head), ``maxpool`` (global-max head), ``resnet18`` (torchvision, untrained,
3x3 stride-1 stem and no max-pool, for 1 x 28 or 3 x 32 images; target layer ``net.layer3``: 7x7 or
8x8 maps).
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import _common  # noqa: F401  (puts examples/ on sys.path)
from demo_data import load_cifar10_subset, load_mnist
from demo_models import SmallCNN

DATASETS = ("mnist", "fmnist", "cifar10")
ARCHS = ("flatten", "gap", "maxpool", "resnet18")
SHORTCUTS = ("swatch", "tag", "cast")
CALIBRATION = {("mnist", "flatten", "swatch"), ("mnist", "gap", "swatch")}
"""The cells the rule's thresholds and the protocol were tuned on; every other cell is held out."""
TAG_CLASS, TAG_FRACTION, TAG = 0, 0.5, 3
SWATCH = 4
CAST = 0.6  # the cast's range in normalised units (a label-coded offset of -CAST/2 .. +CAST/2)


def load(data: str, train: bool, data_dir=None) -> TensorDataset:
    if data == "cifar10":
        return load_cifar10_subset(train, data_dir=data_dir)
    return load_mnist(train, data_dir=data_dir, name={"mnist": "mnist", "fmnist": "fashion-mnist"}[data])


def add_shortcut(kind: str, x: torch.Tensor, y: torch.Tensor, *, attacked: bool, seed: int,
                 num_classes: int = 10) -> tuple[torch.Tensor, np.ndarray]:
    """A copy of the (N, C, H, W) images with the shortcut, and the (N, H, W) bool artifact masks.
    ``attacked``: the shortcut decorrelated from the label (the test rule); else the training rule."""
    rng = np.random.default_rng([int(seed), int(attacked), SHORTCUTS.index(kind)])
    n, _, h, w = x.shape
    yy = y.numpy().astype(np.int64)
    hi, lo = float(x.max()), float(x.min())
    out = x.clone()
    masks = np.zeros((n, h, w), bool)
    if kind == "swatch":
        code = rng.integers(0, num_classes, n) if attacked else yy
        value = hi - (hi - lo) * code / (num_classes - 1) * 0.9
        top, left = rng.random(n) < 0.5, rng.random(n) < 0.5
        for i in range(n):
            r = 0 if top[i] else h - SWATCH
            c = 0 if left[i] else w - SWATCH
            masks[i, r:r + SWATCH, c:c + SWATCH] = True
            out[i, :, r:r + SWATCH, c:c + SWATCH] = float(value[i])
    elif kind == "tag":
        tagged = np.ones(n, bool) if attacked else (yy == TAG_CLASS) & (rng.random(n) < TAG_FRACTION)
        for i in np.flatnonzero(tagged):
            side, t = rng.integers(0, 4), rng.integers(0, max(h, w) - TAG + 1)
            r, c = [(0, t), (h - TAG, t), (t, 0), (t, w - TAG)][side]
            r, c = min(r, h - TAG), min(c, w - TAG)
            masks[i, r:r + TAG, c:c + TAG] = True
            out[i, :, r:r + TAG, c:c + TAG] = hi
    elif kind == "cast":
        code = rng.integers(0, num_classes, n) if attacked else yy
        offset = torch.as_tensor(CAST * (code / (num_classes - 1) - 0.5), dtype=x.dtype).view(n, 1, 1, 1)
        out = (x + offset).clamp(lo, hi)
        masks[:] = True
    else:
        raise ValueError(f"unknown shortcut {kind!r}: one of {SHORTCUTS}")
    return out, masks


class Classifier(pl.LightningModule):
    """Cross-entropy, Adam 1e-3 (a constant rate: the fine-tuning reloads its loaders every epoch)."""

    target_layer = "features"

    def training_step(self, batch, _idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class CNN(Classifier):
    """SmallCNN's features (width 16) with a flatten, global-average or global-max head."""

    def __init__(self, head: str = "flatten", in_channels: int = 1, image_size: int = 28, width: int = 16):
        super().__init__()
        self.features = SmallCNN(in_channels=in_channels, width=width, image_size=image_size).features
        side = image_size // 4
        if head == "flatten":
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * side * side, 10))
        else:
            pool = nn.AdaptiveAvgPool2d(1) if head == "gap" else nn.AdaptiveMaxPool2d(1)
            self.head = nn.Sequential(pool, nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width, 10))

    def forward(self, x):
        return self.head(self.features(x))


class ResNet18(Classifier):
    """torchvision's ResNet-18, untrained, with a 3x3 stride-1 stem and no max-pool for small images."""

    target_layer = "net.layer3"

    def __init__(self, in_channels: int = 1):
        super().__init__()
        import torchvision

        self.net = torchvision.models.resnet18(weights=None, num_classes=10)
        self.net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.net.maxpool = nn.Identity()

    def forward(self, x):
        return self.net(x)


def make_model(arch: str, in_channels: int, image_size: int) -> Classifier:
    if arch == "resnet18":
        return ResNet18(in_channels)
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}: one of {ARCHS}")
    return CNN(arch, in_channels, image_size)


def parse_variant(spec: str) -> tuple[str, str, str]:
    """``DATA:ARCH:SHORTCUT`` (``mnist:flatten:swatch``); any part ``*`` for all of its values."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"--variant {spec!r}: write DATA:ARCH:SHORTCUT, e.g. mnist:flatten:swatch")
    for p, allowed in zip(parts, (DATASETS, ARCHS, SHORTCUTS)):
        if p != "*" and p not in allowed:
            raise ValueError(f"--variant {spec!r}: {p!r} is not one of {allowed}")
    return tuple(parts)  # type: ignore[return-value]


def expand(specs: list[str]) -> list[tuple[str, str, str]]:
    cells = []
    for spec in specs:
        d, a, s = parse_variant(spec)
        for dd in DATASETS if d == "*" else (d,):
            for aa in ARCHS if a == "*" else (a,):
                for ss in SHORTCUTS if s == "*" else (s,):
                    if (dd, aa, ss) not in cells:
                        cells.append((dd, aa, ss))
    return cells
