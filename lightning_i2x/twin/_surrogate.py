"""The twin surrogate: a small convolutional VAE whose first latents are the context concepts.

GLANCE (Kori, Glocker, Toni, arXiv 2207.01917) distils a classifier into a StyleGAN-v2 twin; this
is a CPU-sized redesign, not a reproduction. The loss of one batch is

    reconstruction (binary cross-entropy on the image mapped to [0, 1])
    + beta x KL(q(z | x) || N(0, I))                        (the VAE prior)
    + distill x KL(classifier softmax || softmax(head(mu)))  (the twin classifier, on the mean)
    + align x mean squared error of z[:, :k] to the standardised concepts
    + decorrelate x the sum of squared correlations of each residual latent with every other latent,

so z[:, j] for j < k reads concept j in standard units, and the residual latents hold what the
concepts do not, linearly unrelated to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TwinVAE", "SurrogateLosses", "train_surrogate", "batched", "r2_score"]


class TwinVAE(nn.Module):
    """Encoder (two stride-2 convolutions) to a ``latent_dim`` Gaussian, decoder back to the
    image (two transposed convolutions, sigmoid), and a linear head on z to the classes."""

    def __init__(self, channels: int, size: tuple[int, int], latent_dim: int, num_classes: int, width: int = 16):
        super().__init__()
        h, w = size
        self.size, self.channels = (h, w), channels
        self.inner = ((h + 3) // 4, (w + 3) // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.1),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.1), nn.Flatten())
        with torch.no_grad():
            flat = self.encoder(torch.zeros(1, channels, h, w)).shape[1]
        self.to_stats = nn.Sequential(nn.Linear(flat, 128), nn.LeakyReLU(0.1), nn.Linear(128, 2 * latent_dim))
        self.from_z = nn.Sequential(nn.Linear(latent_dim, 128), nn.LeakyReLU(0.1),
                                    nn.Linear(128, 2 * width * self.inner[0] * self.inner[1]), nn.LeakyReLU(0.1))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(width, channels, 4, 2, 1))
        self.head = nn.Linear(latent_dim, num_classes)
        self.width = width

    def encode(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(x01)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_z(z).view(-1, 2 * self.width, *self.inner)
        return self.decoder(h)[..., : self.size[0], : self.size[1]]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))


@dataclass(frozen=True)
class SurrogateLosses:
    """The weights of the surrogate's loss terms (see the module's docstring)."""

    beta: float = 1.0
    distill: float = 20.0
    align: float = 50.0
    decorrelate: float = 20.0


def _residual_correlation(mu: torch.Tensor, k: int) -> torch.Tensor:
    z = (mu - mu.mean(0)) / (mu.std(0) + 1e-4)
    c = z.T @ z / (len(z) - 1)
    off = c - torch.diag(torch.diag(c))
    return (off[k:] ** 2).sum()  # rows of the residual latents: against every other latent


def train_surrogate(x01: torch.Tensor, teacher: torch.Tensor, concepts: torch.Tensor, *, latent_dim: int, epochs: int,
                    batch_size: int, lr: float, losses: SurrogateLosses, seed: int) -> tuple[TwinVAE, list[float]]:
    """Train a ``TwinVAE`` on images in [0, 1] (N, C, H, W), the classifier's probabilities
    (N, M) and the standardised concepts (N, k). Returns the model (eval mode) and the mean loss
    of each epoch. Runs on the CPU with its own generator: the caller's RNG is not consumed."""
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        vae = TwinVAE(x01.shape[1], tuple(x01.shape[2:]), latent_dim, teacher.shape[1])
    finally:
        torch.random.set_rng_state(torch_state)
    k = concepts.shape[1]
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    n = len(x01)
    history = []
    vae.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 4:
                continue
            x, p, c = x01[idx], teacher[idx], concepts[idx]
            mu, logvar = vae.encode(x)
            z = mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
            recon = F.binary_cross_entropy_with_logits(vae.decode_logits(z), x, reduction="sum") / len(x)
            kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1).mean()
            distill = F.kl_div(F.log_softmax(vae.head(mu), dim=1), p, reduction="batchmean")
            align = F.mse_loss(mu[:, :k], c, reduction="sum") / len(x)
            loss = (recon + losses.beta * kl + losses.distill * distill + losses.align * align
                    + losses.decorrelate * _residual_correlation(mu, k))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    vae.eval()
    return vae, history


def batched(fn, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``fn`` over ``x`` in batches, without gradients, concatenated."""
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else x


def r2_score(pred: np.ndarray, true: np.ndarray) -> float:
    """1 - residual / total sum of squares."""
    ss = ((true - true.mean()) ** 2).sum()
    return float(1 - ((true - pred) ** 2).sum() / ss) if ss > 0 else float("nan")
