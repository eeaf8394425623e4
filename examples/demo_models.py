"""The small CNN used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["SmallCNN", "patch_cnn", "fit_patch_cnn"]


class SmallCNN(pl.LightningModule):
    """Three convolutions with BatchNorm and two poolings (``features``: a 7x7 map at 28x28 input,
    the I2X target layer), global average pooling, dropout, linear: GradCAM of this head is exactly
    CAM. ``flat_head=True`` puts the linear layer over the whole 7x7 map instead: it learns MNIST in
    fewer steps (96 % after 94 steps of batch 128, against 71 % pooled), but GradCAM's averaged
    gradients then zero a fifth of the maps, so the demo keeps the pooled head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, lr: float = 3e-3, one_cycle: bool = True,
                 image_size: int = 28, flat_head: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        )
        if flat_head:
            side = image_size // 4
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * side * side, num_classes))
        else:
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width, num_classes))
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch, _idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        """Adam; with ``one_cycle`` its rate follows a one-cycle schedule over the whole fit (warm-up
        to ``lr``, then annealed), so the model learns fast and its validation accuracy is steady
        at the later records (a constant 3e-3 with BatchNorm swings between checkpoints; with the
        schedule the demo's probe accuracy stayed within 0.965-0.995 over its 8 records)."""
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        # the schedule needs epochs of a known length: a trainer that reloads its dataloaders (the
        # targeted fine-tuning's, whose curated and full epochs differ) gets the constant rate
        if not self.hparams.one_cycle or self.trainer.reload_dataloaders_every_n_epochs:
            return opt
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=steps, pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def patch_cnn(num_classes: int = 10, width: int = 64, channels: int = 32) -> nn.Sequential:
    """A CNN of 4 x 4 patches for Decoy MNIST: a stride-4 convolution, two 1 x 1 convolutions (the
    target layer ``"0"``, a 7 x 7 map at 28 px whose cells are exactly the swatch's), a global max
    pool and a linear head. It sees each patch alone, so it cannot read a digit's shape (about 10 %
    on clean MNIST) and takes the swatch: the planted model of the channel-localisation check."""
    features = nn.Sequential(nn.Conv2d(1, width, 4, stride=4), nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(),
                             nn.Conv2d(width, channels, 1), nn.ReLU())
    return nn.Sequential(features, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def fit_patch_cnn(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 40, lr: float = 1e-2, batch: int = 64,
                  head_decay: float = 0.1, seed: int = 0) -> nn.Sequential:
    """Train ``patch_cnn`` with Adam under a one-cycle schedule (peak ``lr``), its head's weights
    projected onto W >= 0 after every step, as InfoDisent's head is: with signed weights a class can
    be read from the other classes' evidence being low (a negative weight), and then no channel
    of its own peaks anywhere. The head's weights decay (AdamW, ``head_decay``), the bias does not:
    a channel lit alike in every image is a bias in disguise, and the decay moves that constant onto
    the free bias. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    head = model[-1]
    body = [p for n, p in model.named_parameters() if not n.startswith(f"{len(model) - 1}.")]
    opt = torch.optim.AdamW([{"params": body, "weight_decay": 0.0}, {"params": [head.weight], "weight_decay": head_decay},
                             {"params": [head.bias], "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(x) // batch), pct_start=0.15)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch):
            idx = perm[s : s + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                head.weight.clamp_(min=0)
    return model.eval()
