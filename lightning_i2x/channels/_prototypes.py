"""Channels as I2X prototypes: EPIC's prediction-preserving unmixing fitted on the model's
features, each location assigned to its dominant unmixed channel among the K channels the head
weighs most. The result is an ordinary ``Prototypes`` (projection = the K rows of U, centroids =
equal multiples of the unit vectors), so nearest-centroid search is exactly "the largest channel"
and every I2X view, measure and fine-tuning reads it as it reads k-means prototypes."""

from __future__ import annotations

import numpy as np
import torch

from ..prototypes import Prototypes
from ._epic import EpicResult, fit_epic

__all__ = ["top_channels", "channel_prototypes", "ChannelStream"]


def top_channels(weight: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """(k,) ascending channel indices: the classes take turns picking their next channel of largest
    (unmixed) head weight not yet chosen, so every class is represented before any has a second."""
    w = np.asarray(weight.detach().cpu() if isinstance(weight, torch.Tensor) else weight, dtype=np.float64)
    m, d = w.shape
    if not 1 <= k <= d:
        raise ValueError(f"the channel source makes at most D = {d} prototypes (one per channel of the target layer), got K = {k}")
    ranked = np.argsort(-w, axis=1)
    chosen: list[int] = []
    taken = np.zeros(d, dtype=bool)
    depth = np.zeros(m, dtype=np.int64)
    while len(chosen) < k:
        for c in range(m):
            while depth[c] < d and taken[ranked[c, depth[c]]]:
                depth[c] += 1
            if depth[c] < d and len(chosen) < k:
                taken[ranked[c, depth[c]]] = True
                chosen.append(int(ranked[c, depth[c]]))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def channel_prototypes(features: torch.Tensor, epic: EpicResult, k: int) -> tuple[Prototypes, np.ndarray, np.ndarray, np.ndarray]:
    """(prototypes, (N*h*w,) assignment in ``permute(0, 2, 3, 1)`` order, squared distances, the
    (K,) channel of each prototype id) for (N, D, h, w) ``features`` and a fitted EPIC unmixing.

    Prototype i is unmixed channel ``channels[i]``; a location goes to the prototype whose channel
    is largest there. The centroids are ``alpha e_i`` with alpha the largest unmixed value among
    the chosen channels: all centroids have one norm, so the nearest one is the largest channel,
    and the distance ranks a channel's locations roughly by its strength."""
    channels = top_channels(epic.weight, k)
    projection = epic.rotation[torch.as_tensor(channels)].double().numpy()  # (K, D)
    rows = features.detach().permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double().numpy()
    y = rows @ projection.T  # (n, K)
    alpha = max(float(y.max()), 1e-6)
    protos = Prototypes(projection.astype(np.float32), np.zeros(k, np.float32), (alpha * np.eye(k)).astype(np.float32))
    assignment = y.argmax(1).astype(np.int64)
    distances = ((y**2).sum(1) - 2 * alpha * y[np.arange(y.shape[0]), assignment] + alpha**2).clip(min=0).astype(np.float32)
    protos.inertia = float(distances.sum(dtype=np.float64))
    return protos, assignment, distances, channels


class ChannelStream:
    """The channel source with ``PrototypeStream``'s interface (``add`` each probe batch's
    activations, then ``fit``): keeps the (B, D, h, w) activations on the CPU, fits EPIC on them
    with the head read when the stream was made, and returns ``channel_prototypes``' first three.
    Ids are channel indices, stable by construction: ``fit`` ignores ``previous_assignment`` (no
    matching is needed)."""

    def __init__(self, num_prototypes: int, head: tuple[np.ndarray, np.ndarray], *, epochs: int = 20, seed: int = 0):
        self.num_prototypes, self.head, self.epochs, self.seed = int(num_prototypes), head, int(epochs), int(seed)
        self._batches: list[torch.Tensor] = []
        self.num_vectors = 0
        self.channels: np.ndarray | None = None  # the channel of each prototype id after fit
        self.epic: EpicResult | None = None

    def add(self, activations) -> None:
        x = torch.as_tensor(activations).detach()
        if x.ndim != 4:
            raise ValueError(f"activations must be (B, d, h, w), got shape {tuple(x.shape)}")
        self._batches.append(x.float().cpu())
        self.num_vectors += x.shape[0] * x.shape[2] * x.shape[3]

    def fit(self, previous_assignment: np.ndarray | None = None):
        if not self._batches:
            raise ValueError("no activations were added: call add() with each probe batch first")
        features = torch.cat(self._batches)
        self._batches, self.num_vectors = [], 0
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or inf: the model's activations at the target layer are not finite")
        w, b = (torch.as_tensor(np.asarray(t, dtype=np.float32)) for t in self.head)
        self.epic = fit_epic(features, w, b, epochs=self.epochs, seed=self.seed)
        protos, assignment, distances, self.channels = channel_prototypes(features, self.epic, self.num_prototypes)
        return protos, assignment, distances
