"""``RepairDuringTraining``: the opt-in repair of a shortcut while the model trains.

``I2XCallback`` never changes training. This callback does, and only once I2X has flagged a shortcut
suspect: from the record at which ``run.suspect_report()`` first names one, every training step adds
RR-ClArC's latent penalty (``finetune.latent_penalty``: the squared projection of the spatially
averaged gradient at the target layer onto the suspects' centred directions) to the gradients, its
weight balanced against the cross-entropy of the first penalised batch (``finetune.balance_weight``).
Shortcuts are learned early (simplicity bias), and only a training-time explainer sees the record at
which one appears; the repair starts there instead of after the fit. Before that record training is
untouched: no extra forward, no random draw.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import TensorDataset

from .._core import check_choice, check_int
from .._model import preserved_rng, split_batch
from ..analysis import SUSPECT_RULE_DEFAULTS, SuspectReport
from ..finetune import balance_weight, basis_from_model, latent_penalty, parameters_after
from ..measures import RelianceMeasure
from ..viz import LogSink
from ._i2x import I2XCallback

__all__ = ["RepairDuringTraining", "RepairStart"]

FULL_PRECISION = ("32-true", "64-true", "32", "64")
ATTACHMENT = "repair-during-training"
"""The run's record that training changed: where the repair switched on, and why (``run.attachment(ATTACHMENT)``)."""


@dataclasses.dataclass(frozen=True)
class RepairStart:
    """Where the repair switched on: the record (0-based, into the run's checkpoints), the epoch and
    global step after which it penalised every step, the suspects (prototype ids of that record),
    the rank of their latent basis and the penalty weight (set on the first penalised batch)."""

    record: int
    epoch: int
    step: int
    prototypes: tuple[int, ...]
    rank: int

    def describe(self) -> str:
        ids = ", ".join(f"P-{k}" for k in self.prototypes)
        return f"record {self.record} (epoch {self.epoch}, step {self.step}), suspects {ids}, latent rank {self.rank}"


class RepairDuringTraining(pl.Callback):
    """Penalise the model's use of the suspects' latent directions from the record at which I2X
    first flags a shortcut suspect (module docstring). Opt-in: add it after ``i2x`` to
    ``Trainer(callbacks=[...])``; the I2XCallback must measure the reliance at every record.

    Args:
        i2x: the ``I2XCallback`` of the same trainer, with ``measures=[RelianceMeasure(when="record")]``.
        penalty_ratio: the penalty's share against the cross-entropy on the first penalised batch.
        directions: the centred directions per suspect in the latent basis (``analysis.suspect_basis``).
        layers: ``"after"`` (default, as ``FinetuneOptions.latent_layers``): the penalty's gradient
            reaches only the parameters after the target layer; ``"all"``: every trainable one. The
            cross-entropy's gradient is untouched either way.
        seed: seeds the penalty's random signs (its own generator: no global draw).
        **thresholds: the suspect rule's (``SUSPECT_RULE_DEFAULTS``), as ``I2XRun.suspect_report``.

    After fit: ``started`` (a ``RepairStart``, or None when no record flagged a suspect: then it
    did nothing, and says so), ``weight``, ``last_report`` (the rule's report at the last record read).
    The run keeps where it switched on, and why, as the attachment ``"repair-during-training"``, so
    whoever reads the run later knows training was changed from that record.
    Single process, automatic optimisation, full precision; anything else is refused at ``setup``.
    """

    def __init__(self, i2x: I2XCallback, *, penalty_ratio: float = 1.0, directions: int = 3, layers: str = "after",
                 seed: int = 0, **thresholds):
        super().__init__()
        if not isinstance(i2x, I2XCallback):
            raise TypeError(f"RepairDuringTraining needs the trainer's I2XCallback, got {type(i2x).__name__}")
        if not any(isinstance(m, RelianceMeasure) and m.when == "record" for m in i2x.measures):
            raise ValueError("RepairDuringTraining reads the suspects at every record, which needs the reliance at every record: "
                             "give the I2XCallback measures=[RelianceMeasure(when='record')]")
        if not (isinstance(penalty_ratio, (int, float)) and math.isfinite(penalty_ratio) and penalty_ratio > 0):
            raise ValueError(f"RepairDuringTraining.penalty_ratio must be a positive number, got {penalty_ratio!r}")
        check_int(self, "directions", directions)
        check_int(self, "seed", seed, low=0)
        check_choice(self, "layers", layers, ("after", "all"))
        unknown = sorted(set(thresholds) - set(SUSPECT_RULE_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown suspect-rule threshold(s) {unknown}; the rule takes {sorted(SUSPECT_RULE_DEFAULTS)}")
        self.i2x, self.penalty_ratio, self.directions, self.layers, self.seed = i2x, float(penalty_ratio), directions, layers, seed
        self.thresholds = dict(thresholds)
        self.started: RepairStart | None = None
        self.weight: float | None = None
        self.last_report: SuspectReport | None = None
        self._records_read = 0
        self._basis: torch.Tensor | None = None
        self._params: list[torch.nn.Parameter] | None = None
        self._generator = torch.Generator().manual_seed(seed)
        self._batch: torch.Tensor | None = None
        self._loss: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        callbacks = list(trainer.callbacks)
        if self.i2x not in callbacks:
            raise ValueError("RepairDuringTraining's I2XCallback is not among the trainer's callbacks: pass both, "
                             "Trainer(callbacks=[i2x, RepairDuringTraining(i2x)])")
        if trainer.world_size > 1:
            raise ValueError(f"RepairDuringTraining runs in one process; this trainer has {trainer.world_size}. Repair after the "
                             "fit instead (PerturbationFinetuner(run, FinetuneOptions(prototypes='suspects', mode='latent')))")
        if not pl_module.automatic_optimization:
            raise ValueError("RepairDuringTraining adds to the gradients between backward and the optimiser step, which needs "
                             "automatic optimisation; with manual optimisation add finetune.latent_penalty to your loss")
        if str(trainer.precision) not in FULL_PRECISION:
            raise ValueError(f"RepairDuringTraining needs full precision (one of {FULL_PRECISION}), got {trainer.precision!r}: "
                             "a mixed-precision loss is scaled before backward and its penalty would not be")
        rank_zero_info("RepairDuringTraining is on: from the record at which I2X first flags a shortcut suspect, every training "
                       "step adds the latent penalty of the suspects' directions (training changes from there)")

    # -- switching on ---------------------------------------------------------------------------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Read the record just made (``I2XCallback`` analyses it in ``on_validation_epoch_end``)."""
        run = self.i2x.run
        if trainer.sanity_checking or self.started is not None or run is None or run.num_checkpoints <= self._records_read:
            return
        self._records_read = run.num_checkpoints
        if run.stored_reliance() is None:  # this record's reliance failed (and I2XCallback said so)
            return
        self.last_report = run.suspect_report(**self.thresholds)
        if self.last_report.suspects:
            self._switch_on(trainer, pl_module, run, self.last_report)

    def _switch_on(self, trainer: pl.Trainer, pl_module: pl.LightningModule, run, report: SuspectReport) -> None:
        layer = pl_module.get_submodule(run.config.target_layer)
        images = torch.as_tensor(np.asarray(run.images), dtype=torch.float32, device=pl_module.device)
        probe = TensorDataset(images, torch.as_tensor(np.asarray(run.labels)).long())
        with preserved_rng():
            basis = basis_from_model(pl_module, layer, probe, np.arange(len(probe)), run.prototypes, list(report.suspects),
                                     directions=self.directions, device=pl_module.device)
        if basis.rank == 0:
            rank_zero_warn(f"RepairDuringTraining: record {run.num_checkpoints - 1} flags {report.summary()}, but their locations "
                           "span no direction at the target layer; not switched on (the next record is read again)")
            return
        self._basis = torch.as_tensor(basis.basis, dtype=torch.float32)
        self.started = RepairStart(run.num_checkpoints - 1, trainer.current_epoch, trainer.global_step, tuple(report.suspects), basis.rank)
        self._bind(pl_module)
        run.save_attachment(ATTACHMENT, data={**dataclasses.asdict(self.started), "penalty_ratio": self.penalty_ratio,
                                              "layers": self.layers, "rule": report.summary()}, checkpoint=self.started.record)
        LogSink(trainer.loggers).scalars({"i2x/repair_on": 1.0}, trainer.global_step)
        rank_zero_info(f"RepairDuringTraining switched on at {self.started.describe()}: {report.summary()}")

    def _bind(self, pl_module: pl.LightningModule) -> None:
        """The parameters the penalty's gradient reaches (found once, on one probe image)."""
        layer = pl_module.get_submodule(self.i2x.run.config.target_layer)
        if self.layers == "all":
            self._params = [p for p in pl_module.parameters() if p.requires_grad]
            return
        sample = torch.as_tensor(np.asarray(self.i2x.run.images[:1]), dtype=torch.float32, device=pl_module.device)
        self._params = parameters_after(pl_module, layer, sample)
        if not self._params:
            raise ValueError("RepairDuringTraining(layers='after'): no parameter lies after the target layer; use layers='all'")

    # -- every step once on -----------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.started is not None:
            self._batch = split_batch(batch, "the training DataLoader", "repair during training")[0]

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self.started is not None:
            self._loss = float(loss.detach())

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started is None or self._batch is None:
            return
        if self._params is None:  # resumed from a checkpoint
            self._bind(pl_module)
        layer = pl_module.get_submodule(self.i2x.run.config.target_layer)
        pen = latent_penalty(pl_module, self._batch, layer, self._basis.to(self._batch.device), generator=self._generator)
        self._batch = None
        if self.weight is None:
            if not float(pen.detach()) > 0:
                return
            self.weight = balance_weight(self._loss, pen, self.penalty_ratio)
        grads = torch.autograd.grad(self.weight * pen, self._params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(self._params, grads):
                if g is not None:
                    p.grad = g.detach() if p.grad is None else p.grad.add_(g)
        pl_module.log("i2x/repair_penalty", pen.detach(), on_step=True, on_epoch=False)

    # -- the end, and resume ----------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.started is not None:
            rank_zero_info(f"RepairDuringTraining was on from {self.started.describe()}, penalty weight {self.weight}")
            return
        last = f"; the last: {self.last_report.summary()}" if self.last_report is not None else ""
        rank_zero_warn(f"RepairDuringTraining did nothing: none of the {self._records_read} records read flagged a shortcut "
                       f"suspect{last}")

    def state_dict(self) -> dict[str, Any]:
        return {"started": None if self.started is None else dataclasses.asdict(self.started), "weight": self.weight,
                "records_read": self._records_read, "basis": None if self._basis is None else self._basis.clone(),
                "generator": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        started = state_dict.get("started")
        self.started = None if started is None else RepairStart(**{**started, "prototypes": tuple(started["prototypes"])})
        self.weight, self._records_read, self._basis = state_dict.get("weight"), int(state_dict.get("records_read", 0)), state_dict.get("basis")
        if state_dict.get("generator") is not None:
            self._generator.set_state(state_dict["generator"])
        self._params = None
