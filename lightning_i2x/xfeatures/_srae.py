"""The sparse reconstruction autoencoder (SRAE) of XNN and its three losses.

Qi, Khorram and Li ("Embedding Deep Networks into Visual Explanations", AIJ 2021): an encoder
``d -> 800 -> 100 -> n_x`` with ReLU (the ``n_x`` outputs are the x-features, >= 0; dropout after
the first layer), a mirrored decoder ``n_x -> 100 -> 800 -> d`` and a linear head ``n_x -> 1``
that predicts the network's score from the x-features. Trained greedily layer by layer as shallow
autoencoders, then fine-tuned end to end on ``alpha_pred L_pred + alpha_rec L_rec + alpha_pt L_pt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._core import check_int, check_number, fail

__all__ = ["SRAE", "SRAEOptions", "log_reconstruction_loss", "pull_away_loss", "train_srae", "bic_score"]

HIDDEN = (800, 100)
"""The encoder's two hidden widths in the paper."""


@dataclass(frozen=True)
class SRAEOptions:
    """How an SRAE is trained. The loss weights, optimiser, batch and schedule are the authors'
    (their training code); the epochs are scaled for a CPU (the authors' count is not stated in
    the paper). ``alpha_*`` 0 switches a loss term off (the benchmark's ablation).

    alpha_pred, alpha_rec, alpha_pt: the weights of L_pred, L_rec and L_pt (1, 100, 0.5).
    q: the log reconstruction loss's scale, ``log(1 + q MSE_d)`` (100).
    lr, weight_decay, batch_size: Adam's (1e-3, 1e-4) and the mini-batch (50).
    pretrain_epochs: epochs of each greedy layer-wise autoencoder.
    epochs: fine-tuning epochs; the learning rate is multiplied by 0.1 every ``lr_step`` epochs
        (the authors' 40; scaled with ``epochs`` here).
    dropout: after the first encoder layer (0.02: "small" in the paper; the value is ours).
    reconstruction: ``"log"`` (the paper's) or ``"mse"`` (plain MSE, for comparison).
    seed: initialisation, dropout and batch order.
    """

    alpha_pred: float = 1.0
    alpha_rec: float = 100.0
    alpha_pt: float = 0.5
    q: float = 100.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 50
    pretrain_epochs: int = 3
    epochs: int = 30
    lr_step: int = 20
    dropout: float = 0.02
    reconstruction: str = "log"
    seed: int = 0

    def __post_init__(self):
        for name in ("alpha_pred", "alpha_rec", "alpha_pt", "weight_decay"):
            check_number(self, name, getattr(self, name))
        check_number(self, "q", self.q, strict=True)
        check_number(self, "lr", self.lr, strict=True)
        check_int(self, "batch_size", self.batch_size)
        check_int(self, "pretrain_epochs", self.pretrain_epochs, low=0)
        check_int(self, "epochs", self.epochs)
        check_int(self, "lr_step", self.lr_step)
        check_int(self, "seed", self.seed, low=0)
        if not 0 <= self.dropout < 1:
            fail(self, "dropout", "a probability in [0, 1)", self.dropout)
        if self.reconstruction not in ("log", "mse"):
            fail(self, "reconstruction", "one of ('log', 'mse')", self.reconstruction)
        if self.alpha_pred == 0:
            fail(self, "alpha_pred", "> 0 (the head must be trained to predict the score)", self.alpha_pred)


class SRAE(nn.Module):
    """Encoder ``d -> 800 -> 100 -> n_x`` (ReLU, dropout after the first layer), mirrored decoder
    and linear head ``n_x -> 1``; works on standardised inputs and target."""

    def __init__(self, d: int, n_x: int, dropout: float = 0.1):
        super().__init__()
        check_int("SRAE", "n_x", n_x)
        check_int("SRAE", "d", d)
        widths = (d, *HIDDEN, n_x)
        self.encoders = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.decoders = nn.ModuleList(nn.Linear(b, a) for a, b in zip(widths[:-1], widths[1:]))  # decoders[i] undoes encoders[i]
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_x, 1)
        self.n_x = n_x

    def encode(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """The code after ``depth`` encoder layers (all: the x-features)."""
        for i, layer in enumerate(self.encoders[: depth if depth is not None else len(self.encoders)]):
            x = torch.relu(layer(x))
            if i == 0:
                x = self.dropout(x)
        return x

    def decode(self, z: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """The input reconstructed from the code after ``depth`` encoder layers; linear output."""
        layers = list(self.decoders[: depth if depth is not None else len(self.decoders)])
        for i, layer in enumerate(reversed(layers)):
            z = layer(z)
            if i < len(layers) - 1:
                z = torch.relu(z)
        return z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x-features (B, n_x), reconstruction (B, d), predicted score (B,))."""
        z = self.encode(x)
        return z, self.decode(z), self.head(z).squeeze(1)

    def contributions(self, z: torch.Tensor) -> torch.Tensor:
        """Each x-feature times its head weight (B, n_x): they sum, with the head's bias, to the prediction."""
        return z * self.head.weight[0]


def log_reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, q: float = 100.0) -> torch.Tensor:
    """L_rec: the mean over input dimensions of ``log(1 + q MSE_d)``, MSE_d over the batch. The log
    saturates, so a few badly reconstructed dimensions cost little: the SRAE may let them go."""
    return torch.log1p(q * ((recon - x) ** 2).mean(dim=0)).mean()


def pull_away_loss(contributions: torch.Tensor) -> torch.Tensor:
    """L_pt: the mean squared cosine similarity between different x-features' contribution
    vectors across the batch (0 for a single x-feature), so the concepts differ."""
    n_x = contributions.shape[1]
    if n_x < 2:
        return contributions.sum() * 0.0
    unit = contributions / (contributions.norm(dim=0, keepdim=True) + 1e-8)
    cos = unit.T @ unit
    off = cos - torch.diag(torch.diag(cos))
    return (off**2).sum() / (n_x * (n_x - 1))


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for s in range(0, n, batch_size):
        yield order[s : s + batch_size]


def _adam(params, o: SRAEOptions) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def _centre_biases(layer: nn.Linear, inputs: torch.Tensor, dead_only: bool = False) -> None:
    """Data-dependent start (ours): each unit's bias (``dead_only``: each unit active on no
    sample) set so it is active on half of the samples. The inputs of the deeper layers are ReLU
    outputs, all >= 0, so a unit whose weights sum below 0 starts, and stays, dead on every
    sample, and a dead x-feature explains nothing."""
    with torch.no_grad():
        pre = layer(inputs)
        shift = pre.median(dim=0).values
        if dead_only:
            shift = torch.where((pre > 0).any(dim=0), torch.zeros_like(shift), shift)
        layer.bias -= shift


def _revive(model: SRAE, x: torch.Tensor, dead_only: bool = True) -> None:
    """Re-centre the encoder units that pre-training left dead (all of them without pre-training), layer by layer."""
    for i, enc in enumerate(model.encoders):
        with torch.no_grad():
            inputs = model.encode(x, depth=i)
        _centre_biases(enc, inputs, dead_only=dead_only)


def _pretrain(model: SRAE, x: torch.Tensor, o: SRAEOptions, gen: torch.Generator) -> None:
    """Greedy layer-wise pre-training: layer i and its decoder as a shallow autoencoder (MSE) on
    the codes of the layers below, which stay fixed; each layer's biases centred first."""
    for i, (enc, dec) in enumerate(zip(model.encoders, model.decoders)):
        with torch.no_grad():
            inputs = model.encode(x, depth=i)
        _centre_biases(enc, inputs)
        opt = _adam([*enc.parameters(), *dec.parameters()], o)
        for _ in range(o.pretrain_epochs):
            for idx in _batches(len(inputs), o.batch_size, gen):
                v = inputs[idx]
                code = torch.relu(enc(v))
                out = dec(code if i > 0 else model.dropout(code))
                if i > 0:
                    out = torch.relu(out)  # the codes below are ReLU outputs
                loss = ((out - v) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()


def loss_terms(model: SRAE, x: torch.Tensor, y: torch.Tensor, o: SRAEOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_pred, L_rec, L_pt) on one batch."""
    z, recon, pred = model(x)
    pred_loss = ((pred - y) ** 2).mean()
    rec = log_reconstruction_loss(recon, x, o.q) if o.reconstruction == "log" else ((recon - x) ** 2).mean()
    return pred_loss, rec, pull_away_loss(model.contributions(z))


def train_srae(x: np.ndarray, y: np.ndarray, n_x: int, options: SRAEOptions = SRAEOptions()) -> SRAE:
    """An SRAE trained on standardised ``x`` (N, d) and ``y`` (N,): pre-training, fine-tuning with
    the step schedule, then the head refitted by least squares (``refit_head``); in eval mode. Uses its own seeded generator and the global
    torch RNG (for dropout) only inside; callers restore it (``_model.preserved_rng``)."""
    check_int("train_srae", "n_x", n_x)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(-1)
    if xt.ndim != 2 or yt.shape[0] != xt.shape[0] or xt.shape[0] < 2:
        raise ValueError(f"train_srae needs x (N, d) and y (N,) with N >= 2, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    torch.manual_seed(options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    model = SRAE(int(xt.shape[1]), n_x, options.dropout)
    with torch.enable_grad():
        model.train()
        _pretrain(model, xt, options, gen)
        model.eval()
        _revive(model, xt, dead_only=options.pretrain_epochs > 0)
        model.train()
        opt = _adam(model.parameters(), options)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=options.lr_step, gamma=0.1)
        for _ in range(options.epochs):
            for idx in _batches(len(xt), options.batch_size, gen):
                pred, rec, pt = loss_terms(model, xt[idx], yt[idx], options)
                loss = options.alpha_pred * pred + options.alpha_rec * rec + options.alpha_pt * pt
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            model.eval()
            _revive(model, xt)
            model.train()
    model.eval()
    refit_head(model, xt, yt)
    return model


def refit_head(model: SRAE, x: torch.Tensor, y: torch.Tensor) -> None:
    """Set the linear head to the least-squares fit of ``y`` on the trained x-features: the exact
    minimum of L_pred for the encoder as trained (ours; the authors' head stays as trained), since
    the head, trained by one term of three, lags the encoder's last steps."""
    with torch.no_grad():
        z = model.encode(x).double()
        design = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], dim=1)
        coef = torch.linalg.lstsq(design, y.double().reshape(-1, 1), driver="gelsd").solution[:, 0]
        model.head.weight.copy_(coef[:-1].reshape(1, -1).float())
        model.head.bias.copy_(coef[-1:].float())


def bic_score(mse: float, variance: float, n: int, n_x: int) -> float:
    """The BIC-like score n_x is chosen by: ``n log(MSE / Var(y)) + n_x log(n)`` on the validation
    part (n samples): the Gaussian log-likelihood of the score's residual plus one parameter per
    x-feature (its head weight). Lower is better."""
    return n * math.log(max(mse, 1e-12) / max(variance, 1e-12)) + n_x * math.log(n)
