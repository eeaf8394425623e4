"""EPIC (the same group, arXiv 2505.12897): only U is trained, to make each channel pure at its
strongest locations, and the head becomes A U^T, so every prediction stays as it was."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._core import check_int, check_number
from .._model import preserved_rng
from ._head import unmix
from ._unmix import orthogonal

__all__ = ["EpicResult", "fit_epic", "channel_purity"]


def _strongest(z: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each channel k of (N, D, h, w) unmixed maps: its ``top`` images by their greatest value
    of channel k, and the flat location of that value in each. Both (D, top), chosen without
    gradient (the choice is discrete; the purity at the chosen locations carries the gradient)."""
    with torch.no_grad():
        peak, where = z.flatten(2).max(-1)  # (N, D)
        n = min(top, z.shape[0])
        images = peak.topk(n, dim=0).indices.T  # (D, n)
        locations = where.T.gather(1, images)  # (D, n)
    return images, locations


def _purity(rotation: torch.Tensor, features: torch.Tensor, top: int) -> torch.Tensor:
    """(D,) mean over channel k's top images of ``p_k / ||p||`` at the image's argmax location of
    channel k, p the unmixed feature vector there (||p|| = ||z||: U is orthogonal)."""
    z = unmix(rotation, features)
    images, locations = _strongest(z, top)
    d = z.shape[1]
    flat = features.flatten(2)  # (N, D, hw)
    raw = flat[images.reshape(-1), :, locations.reshape(-1)].reshape(d, -1, d)  # (D, n, D): z at each chosen location
    p_k = torch.einsum("kd,knd->kn", rotation.to(raw.dtype), raw)  # (D, n): channel k of U z there
    return (p_k / raw.norm(dim=-1).clamp_min(1e-12)).mean(1)


def channel_purity(features: torch.Tensor, rotation: torch.Tensor | None = None, *, top: int = 10, batch_size: int = 4096) -> np.ndarray:
    """(D,) EPIC's purity of each channel of ``rotation @ features`` (None: the backbone's own
    channels): at the argmax location of the channel in each of its ``top`` images,
    ``p_k / ||p||``. 1 when the channel alone is lit there; about 1/sqrt(D) for a random mix."""
    d = features.shape[1]
    u = torch.eye(d) if rotation is None else rotation.detach().float().cpu()
    with torch.no_grad():
        if features.shape[0] <= batch_size:
            return _purity(u, features, top).numpy()
        # the top images over the whole set: each channel's peaks first, then purity at the winners
        peaks = torch.cat([unmix(u, features[s : s + batch_size]).flatten(2).max(-1).values for s in range(0, features.shape[0], batch_size)])
        n = min(top, features.shape[0])
        chosen = peaks.topk(n, dim=0).indices  # (n, D)
        out = np.empty(d, dtype=np.float32)
        for k in range(d):
            zk = unmix(u, features[chosen[:, k]])[:, k].flatten(1)  # (n, hw)
            loc = zk.argmax(1)
            raw = features[chosen[:, k]].flatten(2)[torch.arange(n), :, loc]  # (n, D)
            out[k] = float(((raw @ u[k]) / raw.norm(dim=1).clamp_min(1e-12)).mean())
        return out


@dataclass(frozen=True)
class EpicResult:
    """EPIC's unmixing of a model whose head is avg-pool + linear: ``rotation`` U (D, D), the
    carried-over head ``weight`` A U^T (M, D) and its unchanged ``bias``; the mean purity of the
    backbone's channels and of the unmixed ones (``channel_purity``), and the loss per epoch."""

    rotation: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    purity_before: float
    purity_after: float
    history: list[float]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, M): the carried-over head on the unmixed features; the model's own logits."""
        return unmix(self.rotation, features).mean(dim=(2, 3)) @ self.weight.T + self.bias


def fit_epic(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, epochs: int = 20, batch_size: int = 512,
             lr: float = 1e-3, weight_decay: float = 1e-5, top: int = 10, seed: int = 0) -> EpicResult:
    """Train U = exp(A - A^T) (A from 0) to maximise the mean purity of the channels of each batch
    (each channel's ``top`` images in the batch, at their argmax locations), Adam with EPIC's
    published settings as defaults; the head ``weight`` (M, D) becomes ``weight @ U^T``. The
    features are (N, D, h, w) tensors cached once; the global RNG is left as it was."""
    if features.ndim != 4:
        raise ValueError(f"fit_epic takes (N, D, h, w) features, got shape {tuple(features.shape)}")
    d = int(features.shape[1])
    if weight.ndim != 2 or weight.shape[1] != d or bias.shape != (weight.shape[0],):
        raise ValueError(f"the head must be weight (M, {d}) and bias (M,), got {tuple(weight.shape)} and {tuple(bias.shape)}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("top", top)):
        check_int("fit_epic", name, value, low=0 if name == "epochs" else 1)
    check_number("fit_epic", "lr", lr, strict=True)
    check_number("fit_epic", "weight_decay", weight_decay)
    features = features.detach().float()
    a = nn.Parameter(torch.zeros(d, d))  # float32 steps (orthogonal(exact=False)); the final U in float64
    opt = torch.optim.Adam([a], lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    history = []
    with preserved_rng():
        for _ in range(epochs):
            order = torch.randperm(features.shape[0], generator=g)
            total, count = 0.0, 0
            for s in range(0, features.shape[0], batch_size):
                batch = features[order[s : s + batch_size]]
                opt.zero_grad()
                loss = -_purity(orthogonal(a, exact=False), batch, top).mean()
                loss.backward()
                opt.step()
                total, count = total + float(loss.detach()) * batch.shape[0], count + batch.shape[0]
            history.append(total / max(count, 1))
    with torch.no_grad():
        u64 = orthogonal(a.detach().double())
        new_weight = (weight.detach().double() @ u64.T).float()
    u = u64.float()
    return EpicResult(u, new_weight, bias.detach().float().clone(), float(channel_purity(features, None, top=top).mean()),
                      float(channel_purity(features, u, top=top).mean()), history)
