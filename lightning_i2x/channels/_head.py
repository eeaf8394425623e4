"""InfoDisent's interpretable head on a frozen backbone's features: unmix by U = exp(A - A^T),
pool each channel with mx_pool, score with non-negative weights, so every logit is a sum of
per-channel contributions plus a bias."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from ._unmix import mx_pool, orthogonal, relaxed_mx_pool

__all__ = ["InfoDisentHead", "unmix"]


def unmix(rotation: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """U applied to every location: (D, D) x (N, D, h, w) -> (N, D, h, w)."""
    return torch.einsum("kd,ndhw->nkhw", rotation.to(features.dtype), features)


class InfoDisentHead(pl.LightningModule):
    """The head, trained on cached (N, D, h, w) features (``batch = (features, labels)``).

    ``A`` starts at 0 (U = I: the backbone's own channels), the weights at ``init_weight`` clamped
    to >= 0 (the model's head, when it is avg-pool + linear) or small positive values. The weights
    are projected onto W >= 0 after every optimiser step (``optimizer_step``), so the head is
    non-negative whenever it is used. Training pools with ``relaxed_mx_pool`` (its value is
    mx_pool's; ``temperature`` is in units of ``scale``, the features' standard deviation).
    Adam with ``lr`` and ``weight_decay`` (EPIC's published 1e-3 and 1e-5; InfoDisent's own were
    not retrievable).
    """

    def __init__(self, num_channels: int, num_classes: int, *, lr: float = 1e-3, weight_decay: float = 1e-5, temperature: float = 0.1,
                 scale: float = 1.0, init_weight: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["init_weight"])
        self.A = nn.Parameter(torch.zeros(num_channels, num_channels))
        if init_weight is None:
            g = torch.Generator().manual_seed(seed)
            init_weight = torch.rand(num_classes, num_channels, generator=g) / num_channels**0.5
        if tuple(init_weight.shape) != (num_classes, num_channels):
            raise ValueError(f"init_weight must be ({num_classes}, {num_channels}), got {tuple(init_weight.shape)}")
        self.weight = nn.Parameter(init_weight.detach().float().clamp(min=0).clone())
        self.bias = nn.Parameter(torch.zeros(num_classes))

    @property
    def rotation(self) -> torch.Tensor:
        """U = exp(A - A^T), (D, D)."""
        return orthogonal(self.A)

    def pooled(self, features: torch.Tensor, *, relaxed: bool = False) -> torch.Tensor:
        """(N, D) mx_pool of the unmixed channels (``relaxed``: the straight-through form of the
        training steps, with U computed in A's dtype, ``orthogonal(exact=False)``, for speed)."""
        z = unmix(orthogonal(self.A, exact=not relaxed), features)
        if relaxed:
            return relaxed_mx_pool(z, self.hparams.temperature * self.hparams.scale)
        return mx_pool(z)

    def contributions(self, features: torch.Tensor, *, relaxed: bool = False) -> torch.Tensor:
        """(N, M, D): ``W[c, k] v_k``, channel k's share of class c's logit."""
        return self.weight.unsqueeze(0) * self.pooled(features, relaxed=relaxed).unsqueeze(1)

    def forward(self, features: torch.Tensor, *, relaxed: bool = False) -> torch.Tensor:
        """(N, M) logits: the sum of the contributions plus the bias (computed as that sum, so
        completeness holds to the last bit)."""
        return self.contributions(features, relaxed=relaxed).sum(-1) + self.bias

    @torch.no_grad()
    def project_weights_(self) -> None:
        """W <- max(W, 0): the projection onto the non-negative weights."""
        self.weight.clamp_(min=0)

    def training_step(self, batch, _idx):
        x, y = batch
        loss = F.cross_entropy(self(x, relaxed=True), y)
        self.log("infodisent/train_loss", loss, prog_bar=False)
        return loss

    def validation_step(self, batch, _idx):
        x, y = batch
        self.log("infodisent/val_accuracy", (self(x).argmax(1) == y).float().mean())

    def optimizer_step(self, *args, **kwargs):
        out = super().optimizer_step(*args, **kwargs)
        self.project_weights_()
        return out

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def train_on(self, features: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int, seed: int = 0) -> list[float]:
        """The same training as a Trainer would run, as a plain loop on tensors (no Trainer
        overhead; seconds per epoch on a CPU): Adam, cross-entropy through the relaxed pool, the
        projection after every step. Returns the mean loss of each epoch."""
        opt = self.configure_optimizers()
        g = torch.Generator().manual_seed(seed)
        history = []
        self.train()
        for _ in range(epochs):
            order = torch.randperm(features.shape[0], generator=g)
            total = 0.0
            for s in range(0, features.shape[0], batch_size):
                idx = order[s : s + batch_size]
                opt.zero_grad()
                loss = F.cross_entropy(self(features[idx], relaxed=True), labels[idx])
                loss.backward()
                opt.step()
                self.project_weights_()
                total += float(loss.detach()) * idx.numel()
            history.append(total / features.shape[0])
        self.eval()
        return history
