"""The inner Lightning Trainer that runs a fine-tuning schedule: one epoch per loader, the
optimizer state carried over, quiet unless asked, seeded, and the module given back attached to
whatever Trainer held it before (the callback's, under ``auto_finetune``)."""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .._model import ForwardFn, default_forward, preserved_rng
from ._penalty import balance_weight, gradcam_penalty, input_gradient_penalty

__all__ = ["PenalisedModule", "detached_copy", "fit_schedule"]


class _ScheduleData(pl.LightningDataModule):
    """The training loader of each epoch, by the schedule (reloaded every epoch)."""

    def __init__(self, loaders: list[DataLoader]):
        super().__init__()
        self.loaders = loaders

    def train_dataloader(self) -> DataLoader:
        return self.loaders[min(self.trainer.current_epoch, len(self.loaders) - 1)]


@contextlib.contextmanager
def _quiet_lightning(verbose: bool):
    """Lightning's start-up lines ("GPU available", ...) for the inner Trainer only when verbose."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    if not verbose:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _SetLearningRate(pl.Callback):
    """``FinetuneOptions.lr`` on every param group of the module's own optimizers."""

    def __init__(self, lr: float):
        self.lr = lr

    def on_train_start(self, trainer, pl_module) -> None:
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = self.lr


def _accelerator(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return dict(accelerator="gpu", devices=[device.index or 0])
    if device.type == "mps":
        return dict(accelerator="mps", devices=1)
    return dict(accelerator="cpu", devices=1)


def fit_schedule(model: pl.LightningModule, loaders: list[DataLoader], *, device: torch.device, lr: float | None, seed: int,
                 progress: bool, trainer_kwargs: dict[str, Any], owner: pl.LightningModule | None = None) -> None:
    """Fit ``model`` one epoch per loader. ``owner``: the user's module when ``model`` wraps it
    (``PenalisedModule``); its Trainer reference is put back, and it is left on ``device``."""
    owner = owner if owner is not None else model
    kw: dict[str, Any] = dict(
        logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, limit_val_batches=0, **_accelerator(device),
    )
    kw.update(trainer_kwargs)
    callbacks = [_SetLearningRate(float(lr))] if lr is not None else []
    previous = getattr(owner, "_trainer", None)
    with preserved_rng(), _quiet_lightning(progress):
        trainer = pl.Trainer(max_epochs=len(loaders), reload_dataloaders_every_n_epochs=1, callbacks=callbacks, **kw)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*validation_step.*no `val_dataloader`.*")
                trainer.fit(model, datamodule=_ScheduleData(loaders))
        finally:
            owner._trainer = previous  # an outer Trainer (auto_finetune) keeps its module
    owner.to(device)


class PenalisedModule(pl.LightningModule):
    """The user's classifier trained with ``cross_entropy(forward(x), y) + weight * penalty`` on the
    flagged regions (``mode="penalise"``). Assumes what the targeting assumes: a classifier whose
    forward gives (B, M) scores and whose loss is the cross-entropy on (x, y) batches; its own
    ``training_step`` is not called (its optimisers, from ``configure_optimizers``, are used). The
    weight is ``balance_weight`` on the first batch holding a flagged region: both terms start alike."""

    def __init__(self, module: pl.LightningModule, penalty: str, ratio: float, layer: torch.nn.Module | None,
                 forward_fn: ForwardFn | None):
        super().__init__()
        self.module = module
        self.penalty, self.ratio, self.forward_fn = penalty, float(ratio), forward_fn
        self.__dict__["layer"] = layer  # a submodule of ``module``: not registered twice
        self.weight: float | None = None

    def forward(self, x):
        return (self.forward_fn or default_forward)(self.module, x)

    def training_step(self, batch, _idx):
        x, y, mask = batch
        if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point():
            raise TypeError("mode='penalise' trains with the cross-entropy on (image, integer label) samples; "
                            f"got labels {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
        if bool(mask.any()):
            if self.penalty == "gradcam":
                pen, logits = gradcam_penalty(self.module, x, y, mask, self.layer, forward_fn=self.forward_fn, return_logits=True)
            else:
                pen, logits = input_gradient_penalty(self.module, x, y, mask, forward_fn=self.forward_fn, return_logits=True)
        else:
            logits, pen = self(x), None
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise TypeError(f"mode='penalise' needs a classifier returning (B, M) scores, got {tuple(getattr(logits, 'shape', ()))}")
        return balanced_loss(self, logits, y, pen)

    def configure_optimizers(self):
        self.module._trainer = self._trainer  # a configure_optimizers that reads self.trainer (schedulers) works
        return self.module.configure_optimizers()


def balanced_loss(module: pl.LightningModule, logits: torch.Tensor, y: torch.Tensor, pen: torch.Tensor | None) -> torch.Tensor:
    """``cross_entropy + module.weight * pen``, the weight set by ``balance_weight`` (against
    ``module.ratio``) on the first batch with a positive penalty; logged as ``finetune_loss``."""
    ce = F.cross_entropy(logits.float(), y)
    loss = ce
    if pen is not None:
        if module.weight is None and float(pen.detach()) > 0:
            module.weight = balance_weight(ce, pen, module.ratio)
        if module.weight is not None:
            loss = ce + module.weight * pen
    module.log("finetune_loss", loss.detach(), prog_bar=True)
    return loss


def detached_copy(model: pl.LightningModule) -> pl.LightningModule:
    """A deep copy of the module without its Trainer (which must not be copied): the control's start."""
    previous = getattr(model, "_trainer", None)
    model._trainer = None
    try:
        return copy.deepcopy(model)
    finally:
        model._trainer = previous
