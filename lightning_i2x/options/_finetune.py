"""The options of Step 7, targeted fine-tuning."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .._core import fail, is_int
from ._base import FILLS, FinetuneMode, MaskFill, MaskRegion, Phase, _bool, _choice, _int, _number, _Options, _set
from ._groups import ExplainOptions


@dataclass(frozen=True)
class FinetuneOptions(_Options):
    """Step 7, targeted fine-tuning: what ``PerturbationFinetuner(run, options)`` and
    ``I2XCallback(auto_finetune=True, finetune=...)`` do.

    pairs: class pairs to target (indices or names); None: the ``top_pairs`` best uncertain pairs
        of the explanation. Each pair's uncertain prototypes are targeted.
    prototypes: prototype ids to target in samples of every class, ``"suspects"`` (the run's
        shortcut suspects, which need a stored reliance) or ``"marked"`` (those marked "shortcut"
        in the dashboard, ``I2XRun.marks``); exclusive with ``pairs``. With
        ``mask_region="all"`` a sample is flagged wherever it holds one, the setting for a shortcut.
    mode: ``"remove"`` (the paper: the curated set leaves out the flagged samples), ``"mask"``
        (keeps them, perturbs the flagged regions' pixels), ``"penalise"`` (keeps them, adds an
        explanation penalty on the flagged regions to the cross-entropy) or ``"latent"``
        (RR-ClArC, no region at all: every training sample, the cross-entropy plus ``lambda`` x
        the squared projection, onto the targeted prototypes' centred subspace at the target
        layer, of the spatially averaged gradient there of a randomly signed sum of the logits;
        ``lambda`` balanced like the penalties', by ``penalty_ratio``). Latent mode applies the
        term in the schedule's ``"curated"`` epochs, plain cross-entropy in its ``"full"`` ones.
    penalty: ``mode="penalise"``'s term: ``"input_gradient"`` (RRR, double backpropagation: a step
        costs about twice as much) or ``"gradcam"`` (the GradCAM share inside the region). Penalise
        mode assumes a classifier trained with the cross-entropy of its forward's (B, M) scores on
        (image, label) batches: the module's own ``training_step`` is not called (its
        ``configure_optimizers`` is).
    penalty_ratio: the penalty's weight makes it start at this multiple of the cross-entropy
        (``balance_weight`` on the first flagged batch; in latent mode on the first batch).
    latent_layers: latent mode trains ``"after"`` (the parameters after the target layer, those
        that do not reach its output: the subspace stays where it was measured) or ``"all"``.
    latent_directions: latent mode's directions per targeted prototype (the top singular
        directions of its locations' features minus the other locations' mean; the first is
        about its centroid minus that mean).
    latent_samples: training images (a seeded subset) whose target-layer features, recomputed on
        the model being fine-tuned, give the subspace.
    control: also fine-tune a copy of the starting weights with ``full`` epochs only, the same
        number and seed, to tell the targeting's gain from more training's. Off by default: it
        doubles the time and holds a second copy of the model.
    schedule: the epochs in order, each ``"curated"`` or ``"full"``; ``("full", "full")`` is the
        baseline. The optimizer (and its state) carries over from epoch to epoch.
    lr: learning rate of the fine-tuning (set on every param group at the start); None keeps the
        module's ``configure_optimizers``.
    max_samples: a seeded random subset of this many training samples (the search and every
        epoch); None: all of them.
    seed: seeds the subset, the shuffling, dropout and the mask noise (the global RNG states are
        restored afterwards).
    mask_fill: one of ``FILLS`` (``lightning_i2x.perturb``, the fills the reliance measure
        uses): ``"blur"``, ``"noise"``, ``"baseline"`` (``mask_baseline``, default the image's
        per-channel mean), ``"random"``, or the content-removing ``"resample"`` (the region's
        pixels from another searched sample of another class, a seeded choice) and ``"mean"``
        (the searched samples' mean image). A blur keeps a uniform region's shade (a decoy
        swatch): its counterexamples still show the shortcut.
    mask_region: ``"salient"``: the salient locations assigned to the targeted prototypes;
        ``"all"``: every location assigned to them.
    top_pairs, prototypes_per_pair: how many pairs ``pairs=None`` takes, and only the n
        highest-ranked uncertain prototypes of each pair.
    batch_size: images per search batch; None: the training loader's batch size.
    trainer_kwargs: extra ``pl.Trainer`` arguments (precision, accelerator, ...); by default no
        logger, no checkpoints, no validation loop, one device.
    explain: ``ExplainOptions`` of the explanation the targets come from when the caller passes
        none (None: the run's recorded ones); its ``saliency_threshold`` also decides which
        training locations are salient.
    out_dir: where the predictions and the result go; None: ``<run>/finetune``.
    """

    pairs: tuple[tuple[int | str, int | str], ...] | None = None
    mode: FinetuneMode | Literal["penalise", "latent"] = "remove"
    schedule: tuple[Phase, ...] = ("curated", "full")
    lr: float | None = None
    max_samples: int | None = None
    seed: int = 0
    mask_fill: MaskFill = "blur"
    mask_region: MaskRegion = "salient"
    mask_baseline: float | None = None
    top_pairs: int = 1
    prototypes_per_pair: int | None = None
    batch_size: int | None = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    prototypes: tuple[int, ...] | Literal["suspects", "marked"] | None = None
    penalty: Literal["input_gradient", "gradcam"] = "input_gradient"
    penalty_ratio: float = 1.0
    latent_layers: Literal["after", "all"] = "after"
    latent_directions: int = 3
    latent_samples: int = 512
    control: bool = False
    explain: ExplainOptions | None = None
    out_dir: str | None = None

    def __post_init__(self):
        if self.prototypes is not None and self.prototypes not in ("suspects", "marked"):
            p = self.prototypes
            if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or not p or not all(is_int(k) and k >= 0 for k in p):
                fail(self, "prototypes", 'a non-empty list of prototype ids, "suspects", "marked" or None', p)
            _set(self, "prototypes", tuple(dict.fromkeys(int(k) for k in p)))
        if self.prototypes is not None and self.pairs is not None:
            fail(self, "prototypes", "None when pairs are given (target pairs or prototypes, not both)", self.prototypes)
        _choice(self, "penalty", ("input_gradient", "gradcam"))
        _number(self, "penalty_ratio", strict=True)
        _bool(self, "control")
        if self.pairs is not None:
            if isinstance(self.pairs, (str, bytes)) or not isinstance(self.pairs, Sequence) or not all(
                    isinstance(p, Sequence) and not isinstance(p, (str, bytes)) and len(p) == 2 for p in self.pairs) or not self.pairs:
                fail(self, "pairs", "a non-empty list of class pairs (a, b), or None", self.pairs)
            _set(self, "pairs", tuple(tuple(p) for p in self.pairs))
        _choice(self, "mode", (*get_args(FinetuneMode), "penalise", "latent"))
        _choice(self, "latent_layers", ("after", "all"))
        _int(self, "latent_directions")
        _int(self, "latent_samples")
        sched = self.schedule
        if isinstance(sched, str) or not isinstance(sched, Sequence) or not sched or any(s not in get_args(Phase) for s in sched):
            fail(self, "schedule", f"a non-empty sequence of {get_args(Phase)} (one epoch each)", sched)
        _set(self, "schedule", tuple(sched))
        _number(self, "lr", strict=True, optional=True)
        _int(self, "max_samples", optional=True)
        _int(self, "seed", low=0)
        _choice(self, "mask_fill", FILLS)
        _choice(self, "mask_region", get_args(MaskRegion))
        _number(self, "mask_baseline", low=-math.inf, optional=True)
        _int(self, "top_pairs")
        _int(self, "prototypes_per_pair", optional=True)
        _int(self, "batch_size", optional=True)
        if not isinstance(self.trainer_kwargs, dict):
            fail(self, "trainer_kwargs", "a dict of pl.Trainer arguments", self.trainer_kwargs)
        reserved = sorted(set(self.trainer_kwargs) & {"max_epochs", "min_epochs", "max_steps", "reload_dataloaders_every_n_epochs", "callbacks"})
        if reserved:
            fail(self, "trainer_kwargs", "free of the keys the schedule sets (max_epochs, callbacks, ...)", reserved)
        if isinstance(self.explain, dict):  # read back from to_dict() or YAML
            _set(self, "explain", ExplainOptions.from_dict(self.explain, strict=False))
        if self.explain is not None and not isinstance(self.explain, ExplainOptions):
            fail(self, "explain", "an ExplainOptions or None", self.explain)
        if isinstance(self.out_dir, os.PathLike):
            _set(self, "out_dir", os.fspath(self.out_dir))
        if self.out_dir is not None and (not isinstance(self.out_dir, str) or not self.out_dir):
            fail(self, "out_dir", "a directory path or None", self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["pairs"] = None if self.pairs is None else [list(p) for p in self.pairs]
        d["explain"] = None if self.explain is None else self.explain.to_dict()
        return d
