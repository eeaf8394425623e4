"""The planted causal chain: MNIST re-rendered under a known structural model (not part of the
library), the ground truth of the twin's tests and benchmark.

    slant ~ Uniform(-0.4, 0.4) rad, applied by shearing (``set_slant``);
    thickness = BASE + 0.8 x slant + Normal(0, NOISE) px, applied by dilation or erosion
    (``set_thickness``);
    label = the re-measured thickness above its median (``role="thickness"``), or the re-measured
    slant above its median (``role="slant"``: the roles swapped).

So the graph over (slant, thickness, logit) is slant -> thickness -> logit with no direct
slant -> logit (``role="thickness"``), or slant -> logit and slant -> thickness (``"slant"``).
The values returned are those re-measured on the rendered images, so the truth includes the
rendering's own error.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lightning_i2x.twin import morpho_measures, set_slant, set_thickness

__all__ = ["BASE", "EFFECT", "NOISE", "render_chain", "labels_of", "ChainCNN", "train_classifier"]

BASE, EFFECT, NOISE = 2.6, 0.8, 0.3


def render_chain(images01: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Re-render (N, 28, 28) digits in [0, 1] under the chain: {"images" (N, 1, 28, 28) float32,
    "slant", "thickness" (re-measured), "planted_slant", "planted_thickness"}."""
    rng = np.random.default_rng(seed)
    n = len(images01)
    slant = rng.uniform(-0.4, 0.4, n)
    thickness = BASE + EFFECT * slant + rng.normal(0.0, NOISE, n)
    out = set_thickness(set_slant(images01, slant), thickness)
    m = morpho_measures(out)
    return {"images": out[:, None].astype(np.float32), "slant": m["slant"], "thickness": m["thickness"],
            "planted_slant": slant, "planted_thickness": thickness}


def labels_of(chain: dict[str, np.ndarray], role: str) -> np.ndarray:
    """Class 1 where the ``role`` feature is above its median."""
    v = chain[role]
    return (v > np.nanmedian(v)).astype(np.int64)


class ChainCNN(nn.Module):
    """A small CNN (two classes by default)."""

    def __init__(self, width: int = 16, num_classes: int = 2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, num_classes))

    def forward(self, x):
        return self.net(x)


def train_classifier(images: np.ndarray, labels: np.ndarray, *, epochs: int = 6, seed: int = 0, lr: float = 3e-3) -> ChainCNN:
    """A ``ChainCNN`` (as many classes as ``labels`` holds) trained with Adam (batch 64), in eval mode."""
    torch.manual_seed(seed)
    model = ChainCNN(num_classes=int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
