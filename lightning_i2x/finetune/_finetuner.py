"""Step 7 of the method: perturbation fine-tuning targeted by the uncertain prototypes.

An uncertain prototype of the class pair (a, b) is evidence the model kept reassigning between a
and b. The training samples that *contain* it (images of class a or b whose salient region, under
the model being fine-tuned, holds a location assigned to it) are the ones that confuse the model.
``PerturbationFinetuner`` finds them by streaming the training set through the model (the same
fast GradCAM pass as the probe: a forward and a backward that stops at the target layer), searching
every location's feature vector against the run's prototype index (FAISS, on the GPU when there
is one), and then fine-tunes:

- ``mode="remove"`` (the paper): the *curated* set is the training set without those samples;
- ``mode="mask"``: the curated set keeps them but perturbs the pixels of the regions that hold the
  uncertain prototype (blur, noise, a baseline or random values);
- ``mode="penalise"``: the set is unchanged and the loss gains an explanation penalty on those
  regions (``lightning_i2x.penalty``: RRR's input gradients or the GradCAM share).

Instead of pairs, ``prototypes=[ids]`` or ``prototypes="suspects"`` (the run's shortcut suspects,
``lightning_i2x.suspects.run_suspects``, which needs the stored reliance of ``RelianceMeasure``)
targets prototypes in every class: the way to remove a shortcut. ``control=True`` also trains a
copy of the model on the full set for the same epochs, so the result says how much of the change
is the targeting's and how much is more training's.

``schedule`` lists the epochs in order: ``("curated", "full")`` is the paper's "curated -> full",
``("full", "full")`` its baseline. Accuracy and the targeted pairs' confusions (both directions) are
measured on the validation set before and after.

The selection logic lives in ``lightning_i2x.selection`` (plain functions on arrays, and
``find_uncertain_samples``, which streams a dataset through them); the Trainer use is thin glue in
``PerturbationFinetuner.fit``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, Subset
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

from .._core import write_json, write_npz
from .._model import ForwardFn, default_forward, evaluation_mode, preserved_rng, split_batch, split_item
from ..analysis import Explanation, Pair, pair_prototypes, resolve_pairs
from ..errors import I2XRunError
from ..options import ExplainOptions, FinetuneOptions
from ..perturb import pixel_mask
from ..saliency import CAM_METHODS, resolve_target_layer
from ..store import I2XRun
from ._penalty import balance_weight, gradcam_penalty, input_gradient_penalty
from ._search import ANY_CLASS, MaskedDataset, Selection, find_uncertain_samples

__all__ = ["PerturbationFinetuner", "FinetuneResult", "finetune_after_fit"]


# -- the result ------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """What a targeted fine-tuning did and measured (``to_dict()`` for JSON).

    confusions_before / confusions_after: {(a, b): (a predicted as b, b predicted as a)} on the
    validation set; removed_or_masked: {(a, b): training samples flagged for the pair}.
    ``skipped_reason`` is set (and the numbers are None) when nothing was done."""

    pairs: list[Pair]
    class_names: list[str]
    mode: str
    schedule: tuple[str, ...]
    prototypes: dict[Pair, list[int]] = field(default_factory=dict)
    removed_or_masked: dict[Pair, int] = field(default_factory=dict)
    num_train_samples: int = 0
    num_curated_samples: int | None = None
    num_val_samples: int = 0
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    confusions_before: dict[Pair, tuple[int, int]] = field(default_factory=dict)
    confusions_after: dict[Pair, tuple[int, int]] = field(default_factory=dict)
    confusion_matrix_before: np.ndarray | None = None
    confusion_matrix_after: np.ndarray | None = None
    seed: int = 0
    lr: float | None = None
    mask_fill: str | None = None
    skipped_reason: str | None = None
    out_dir: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    target_prototypes: list[int] = field(default_factory=list)
    flagged: int | None = None
    penalty: str | None = None
    penalty_weight: float | None = None
    control_accuracy_after: float | None = None
    control_confusions_after: dict[Pair, tuple[int, int]] = field(default_factory=dict)
    control_confusion_matrix_after: np.ndarray | None = None

    @property
    def has_control(self) -> bool:
        return self.control_accuracy_after is not None

    @property
    def targeting_gain(self) -> float | None:
        """Accuracy after targeting minus after the same budget of plain training (None without a control)."""
        if self.skipped or not self.has_control:
            return None
        return float(self.accuracy_after - self.control_accuracy_after)

    @property
    def skipped(self) -> bool:
        return self.skipped_reason is not None

    def targeted_confusions(self, when: str = "after") -> int | None:
        """Confusions of all targeted pairs, both directions, before or after."""
        conf = {"before": self.confusions_before, "after": self.confusions_after}[when]
        return None if self.skipped else int(sum(a + b for a, b in conf.values()))

    def _name(self, c: int) -> str:
        return self.class_names[c]

    def to_dict(self) -> dict:
        pairs = []
        for p in self.pairs:
            a, b = p
            entry = {"classes": [a, b], "names": [self._name(a), self._name(b)], "prototypes": self.prototypes.get(p, []),
                     "removed_or_masked": self.removed_or_masked.get(p)}
            for when, conf in (("before", self.confusions_before), ("after", self.confusions_after)):
                if p in conf:
                    ab, ba = conf[p]
                    entry[f"confusions_{when}"] = {f"{self._name(a)}->{self._name(b)}": int(ab),
                                                   f"{self._name(b)}->{self._name(a)}": int(ba), "total": int(ab + ba)}
            pairs.append(entry)
        cm = lambda m: None if m is None else np.asarray(m).astype(int).tolist()  # noqa: E731
        return {
            "mode": self.mode, "schedule": list(self.schedule), "mask_fill": self.mask_fill, "seed": self.seed, "lr": self.lr,
            "class_names": list(self.class_names), "pairs": pairs,
            "num_train_samples": self.num_train_samples, "num_curated_samples": self.num_curated_samples,
            "num_val_samples": self.num_val_samples,
            "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
            "targeted_confusions_before": self.targeted_confusions("before"),
            "targeted_confusions_after": self.targeted_confusions("after"),
            "confusion_matrix_before": cm(self.confusion_matrix_before), "confusion_matrix_after": cm(self.confusion_matrix_after),
            "skipped_reason": self.skipped_reason, "out_dir": self.out_dir,
            "seconds": {k: round(float(v), 3) for k, v in self.seconds.items()},
            "target_prototypes": [int(k) for k in self.target_prototypes], "flagged": self.flagged,
            "penalty": self.penalty, "penalty_weight": self.penalty_weight,
            "control_accuracy_after": self.control_accuracy_after, "targeting_gain": self.targeting_gain,
            "control_targeted_confusions_after": (int(sum(a + b for a, b in self.control_confusions_after.values()))
                                                  if self.has_control and self.pairs else None),
            "control_confusion_matrix_after": cm(self.control_confusion_matrix_after),
        }

    def to_markdown(self) -> str:
        if self.skipped:
            return f"Targeted fine-tuning skipped: {self.skipped_reason}\n"
        how = f"mode `{self.mode}`" + (f" ({self.penalty} penalty, weight {self.penalty_weight:.3g})"
                                        if self.mode == "penalise" and self.penalty_weight is not None else "")
        head = (f"Targeted fine-tuning, {how}, schedule {' -> '.join(self.schedule)}: "
                f"accuracy {100 * self.accuracy_before:.2f} % -> {100 * self.accuracy_after:.2f} % "
                f"on {self.num_val_samples} validation samples")
        if self.has_control:
            gain = 100 * self.targeting_gain
            head += (f"; the same budget of plain training ({' -> '.join('full' for _ in self.schedule)} from the same "
                     f"weights): {100 * self.control_accuracy_after:.2f} %; targeting adds {gain:+.2f} points.")
        else:
            head += (". No same-budget control was run (control=True): part of this change may be the extra "
                     "training, not the targeting.")
        if self.target_prototypes:
            verb = {"remove": "removed", "mask": "masked", "penalise": "penalised"}.get(self.mode, "flagged")
            protos = ", ".join(f"P-{k}" for k in self.target_prototypes)
            return f"{head}\n\nTargeted prototypes (any class): {protos}; training samples {verb}: {self.flagged}.\n"
        lines = [
            head,
            "",
            "| pair | uncertain prototypes | training samples removed/masked | confusions before | confusions after |",
            "|---|---|---|---|---|",
        ]
        for p in self.pairs:
            a, b = (self._name(c) for c in p)
            (ab0, ba0), (ab1, ba1) = self.confusions_before[p], self.confusions_after[p]
            protos = ", ".join(f"P-{k}" for k in self.prototypes.get(p, [])) or "none"
            lines.append(f"| {a} <-> {b} | {protos} | {self.removed_or_masked.get(p, 0)} | "
                         f"{ab0 + ba0} ({a}->{b} {ab0}, {b}->{a} {ba0}) | {ab1 + ba1} ({a}->{b} {ab1}, {b}->{a} {ba1}) |")
        return "\n".join(lines) + "\n"


def _confusion_matrix(labels: np.ndarray, preds: np.ndarray, m: int) -> np.ndarray:
    """(M, M) counts, rows the true class (torchmetrics; labels outside [0, M) are ignored)."""
    y, p = torch.as_tensor(labels), torch.as_tensor(preds)
    ok = (y >= 0) & (y < m) & (p >= 0) & (p < m)
    return multiclass_confusion_matrix(p[ok], y[ok], num_classes=m).numpy().astype(np.int64)


def _accuracy(labels: np.ndarray, preds: np.ndarray, m: int) -> float:
    return float(multiclass_accuracy(torch.as_tensor(preds), torch.as_tensor(labels), num_classes=m, average="micro"))


def _pair_confusions(cm: np.ndarray, pairs: Sequence[Pair]) -> dict[Pair, tuple[int, int]]:
    return {(a, b): (int(cm[a, b]), int(cm[b, a])) for a, b in pairs}


# -- the Lightning glue ------------------------------------------------------------------------------
class _PhaseData(pl.LightningDataModule):
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
    def __init__(self, lr: float):
        self.lr = lr

    def on_train_start(self, trainer, pl_module) -> None:
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = self.lr


class PerturbationFinetuner:
    """Fine-tune a model on a training set curated by a run's uncertain prototypes (Step 7).

    Args:
        run: the ``I2XRun`` (or its directory) whose prototypes and explanation pick the samples.
        pairs, mode, schedule, lr, max_samples, seed, mask_fill, mask_region, mask_baseline,
            top_pairs, prototypes_per_pair, batch_size, trainer_kwargs: the ``FinetuneOptions``
            fields, checked there:

            - pairs: class pairs to target, by index or name; None = the ``top_pairs`` best
              uncertain pairs of the explanation. Each pair's uncertain prototypes are targeted.
            - mode: ``"remove"`` (the paper: the curated set leaves out the samples that contain
              the uncertain prototypes) or ``"mask"`` (keeps them, perturbs those regions' pixels).
            - schedule: the epochs in order, each ``"curated"`` or ``"full"``; ``("full", "full")``
              is the baseline. The optimizer (and its state) carries over from epoch to epoch.
            - lr: learning rate for the fine-tuning (set on every optimizer param group at the
              start); None keeps the module's ``configure_optimizers``.
            - max_samples: a seeded random subset of this many training samples (for the search and
              every epoch); None = all of them.
            - seed: seeds the subset, the shuffling, dropout and the mask noise (the global RNG
              states are restored afterwards).
            - mask_fill: ``"blur"``, ``"noise"``, ``"baseline"`` (``mask_baseline``, default the
              image's per-channel mean) or ``"random"`` (``lightning_i2x.perturb``).
            - mask_region: ``"salient"``: the salient locations assigned to the uncertain
              prototypes; ``"all"``: every location assigned to them.
            - prototypes_per_pair: only the n highest-ranked uncertain prototypes of each pair.
            - prototypes: prototype ids (or ``"suspects"``) to target in samples of every class,
              instead of pairs. With ``mask_region="all"`` a sample is flagged wherever it holds
              one (salient or not), the setting for a shortcut.
            - penalty, penalty_ratio: ``mode="penalise"``'s term, ``"input_gradient"`` (RRR,
              double backpropagation: a step costs about twice as much) or ``"gradcam"`` (the
              GradCAM share inside the region), weighted so that it starts at ``penalty_ratio``
              times the cross-entropy (``penalty.balance_weight`` on the first flagged batch).
              Penalise mode assumes a classifier trained with the cross-entropy of its forward's
              (B, M) scores on (image, label) batches: it trains the module through a wrapper
              whose step is ``CE + weight * penalty`` (the module's own ``training_step`` is not
              called; its ``configure_optimizers`` is), and refuses other outputs or batches.
            - control: also fine-tune a copy of the starting weights (``control_model`` after
              ``fit``) with ``full`` epochs only, the same number and seed: the result's
              ``control_accuracy_after`` and ``targeting_gain``. Off by default: it doubles the
              fine-tuning's time and holds a second copy of the model.
            - batch_size: images per search batch; None = the training loader's batch size.
            - trainer_kwargs: extra ``pl.Trainer`` arguments (precision, accelerator, ...); by
              default no logger, no checkpoints, no validation loop, one device.
        explanation: the run's current explanation, when the caller holds it (the callback does);
            otherwise it is computed once from the run with ``explain``.
        explain: ``ExplainOptions`` for that (default the run's recorded ones); its
            ``saliency_threshold`` also decides which training locations are salient.
        forward_fn, reshape_transform: as for ``I2XCallback``.
        out_dir: where the predictions and the result go; default ``<run>/finetune``.
        device: where the search and the evaluation run (and the Trainer's accelerator); default
            the model's device.
        progress: tqdm progress bars.

    Raises:
        ValueError: a bad option (from ``FinetuneOptions``), unknown classes in ``pairs``, unknown
            ids in ``prototypes``, both pairs and prototypes.
        I2XRunError: a run with no prototypes or no recorded target layer; ``prototypes="suspects"``
            on a run with no stored reliance.

    ``fit`` fine-tunes the module **in place** (as ``Trainer.fit`` does); copy it first to keep the
    original weights.
    """

    def __init__(
        self,
        run: I2XRun | str | Path,
        pairs: Sequence[Sequence[int | str]] | None = None,
        mode: str = "remove",
        schedule: Sequence[str] = ("curated", "full"),
        lr: float | None = None,
        max_samples: int | None = None,
        seed: int = 0,
        *,
        mask_fill: str = "blur",
        mask_region: str = "salient",
        mask_baseline: float | None = None,
        top_pairs: int = 1,
        prototypes_per_pair: int | None = None,
        batch_size: int | None = None,
        trainer_kwargs: dict | None = None,
        explanation: Explanation | None = None,
        explain: ExplainOptions | None = None,
        forward_fn: ForwardFn | None = None,
        reshape_transform: Callable | None = None,
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        explain_kwargs: dict | None = None,
        saliency_threshold: float | None = None,
        prototypes: Sequence[int] | str | None = None,
        penalty: str = "input_gradient",
        penalty_ratio: float = 1.0,
        control: bool = False,
    ):
        if isinstance(prototypes, (list, tuple, np.ndarray)):
            prototypes = tuple(int(k) if isinstance(k, np.integer) else k for k in prototypes)
        self.options = FinetuneOptions(
            pairs=None if pairs is None else tuple(tuple(p) for p in pairs), mode=mode, schedule=tuple(schedule), lr=lr,
            max_samples=max_samples, seed=seed, mask_fill=mask_fill, mask_region=mask_region, mask_baseline=mask_baseline,
            top_pairs=top_pairs, prototypes_per_pair=prototypes_per_pair, batch_size=batch_size,
            trainer_kwargs=dict(trainer_kwargs or {}), prototypes=prototypes, penalty=penalty, penalty_ratio=penalty_ratio,
            control=control,
        )
        self.run = run if isinstance(run, I2XRun) else I2XRun.load(run)
        if self.run.prototypes is None:
            raise I2XRunError(f"{self.run.path} has no prototypes yet (no checkpoint recorded): nothing to target")
        config = self.run.config
        if config is None:
            raise I2XRunError(f"{self.run.path} does not record its configuration (target layer, CAM method): "
                              "record it with I2XCallback")
        if explain is not None and not isinstance(explain, ExplainOptions):
            raise TypeError(f"PerturbationFinetuner.explain must be an ExplainOptions or None, got {type(explain).__name__}")
        explain = explain if explain is not None else config.explain
        legacy = dict(explain_kwargs or {})
        if saliency_threshold is not None:
            legacy["saliency_threshold"] = saliency_threshold
        if legacy:
            warnings.warn("PerturbationFinetuner(explain_kwargs=..., saliency_threshold=...) is deprecated and will be removed "
                          "in 0.3; pass explain=ExplainOptions(...)", FutureWarning, stacklevel=2)
            explain = ExplainOptions(**{**explain.to_dict(), **legacy})
            explanation = None
        self.explain = explain
        self._explanation = explanation
        self.class_names = self.run.class_names
        self.pairs = None if pairs is None else resolve_pairs(pairs, self.class_names)
        if self.pairs is not None and not self.pairs:
            raise ValueError("pairs is empty; pass None to target the run's top uncertain pairs")
        o = self.options
        self.mode, self.schedule = o.mode, o.schedule
        self.lr, self.max_samples, self.seed = o.lr, o.max_samples, o.seed
        self.mask_fill, self.mask_region, self.mask_baseline = o.mask_fill, o.mask_region, o.mask_baseline
        self.top_pairs, self.prototypes_per_pair = o.top_pairs, o.prototypes_per_pair
        self.saliency_threshold = explain.saliency_threshold
        self.batch_size = o.batch_size
        self.forward_fn = forward_fn
        self.reshape_transform = reshape_transform
        self.trainer_kwargs = dict(o.trainer_kwargs)
        self.out_dir = Path(out_dir) if out_dir is not None else self.run.path / "finetune"
        self.device = None if device is None else torch.device(device)
        self.progress = progress
        self.target_layer = config.target_layer
        # the search runs over the whole training set: an optimised saliency (igos) there would cost
        # thousands of passes per image, so those runs are searched with the native GradCAM
        self.cam = config.cam if config.cam in CAM_METHODS and not config.cam.startswith("igos") else "gradcam"
        self.cam_target = config.probe_pass.cam_target
        self.penalty, self.penalty_ratio, self.control = o.penalty, o.penalty_ratio, o.control
        if self.penalty == "gradcam" and reshape_transform is not None:
            raise ValueError("penalty='gradcam' needs a target layer with (B, D, h, w) maps; with a reshape_transform "
                             "use penalty='input_gradient'")
        self.target_prototypes: list[int] | None = None
        if o.prototypes == "suspects":
            self.target_prototypes = self.run.suspects()  # I2XRunError naming what to do when there is no reliance
        elif o.prototypes is not None:
            k = self.run.num_prototypes
            unknown = [p for p in o.prototypes if not 0 <= p < k]
            if unknown:
                raise ValueError(f"prototypes {unknown} are not prototypes of the run; its prototypes are 0..{k - 1}")
            self.target_prototypes = list(o.prototypes)
        self.control_model: pl.LightningModule | None = None

    @property
    def explanation(self) -> Explanation:
        """The explanation the targets come from (computed once when none was passed)."""
        if self._explanation is None:
            self._explanation = self.run.explain(self.explain)
        return self._explanation

    # -- what to target ---------------------------------------------------------------------------
    def targets(self) -> dict[Pair, list[int]]:
        """{pair: its uncertain prototypes} for the pairs targeted (an empty dict when there are none)."""
        if self.target_prototypes is not None:
            return {ANY_CLASS: list(self.target_prototypes)}
        expl = self.explanation
        pairs = self.pairs if self.pairs is not None else expl.uncertain_pairs()[: self.top_pairs]
        targets = pair_prototypes(expl.uncertain, pairs)
        if self.prototypes_per_pair is not None:
            targets = {p: ks[: self.prototypes_per_pair] for p, ks in targets.items()}
        return targets

    # -- data ----------------------------------------------------------------------------------------
    @staticmethod
    def _one_loader(loaders: Any, what: str) -> DataLoader:
        if isinstance(loaders, (list, tuple)) and len(loaders) == 1:
            loaders = loaders[0]
        if not isinstance(loaders, DataLoader):
            raise TypeError(f"{what} must be one torch DataLoader, got {type(loaders).__name__}")
        return loaders

    def _train_dataset(self, loader: DataLoader) -> tuple[Dataset, np.ndarray]:
        ds = loader.dataset
        if isinstance(ds, IterableDataset) or not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise TypeError(
                f"the training set ({type(ds).__name__}) cannot be indexed: the curated set is a Subset of it, so it "
                "must be a map-style Dataset with __len__ and __getitem__ (not an IterableDataset)"
            )
        n = len(ds)
        if n == 0:
            raise ValueError("the training set is empty")
        try:
            first = ds[0]
        except Exception as e:
            raise TypeError(f"the training set ({type(ds).__name__}) cannot be indexed: ds[0] raised {type(e).__name__}: {e}") from None
        split_item(first, "the training Dataset", "fine-tuning")
        if self.max_samples is not None and self.max_samples < n:
            g = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(n, generator=g)[: self.max_samples].sort().values.numpy()
        else:
            idx = np.arange(n)
        return ds, idx.astype(np.int64)

    def _loader_like(self, loader: DataLoader, dataset: Dataset, epoch: int) -> DataLoader:
        shuffle = isinstance(loader.sampler, RandomSampler) or (loader.batch_sampler is not None
                                                               and isinstance(getattr(loader.batch_sampler, "sampler", None), RandomSampler))
        bs = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 64
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return DataLoader(dataset, batch_size=bs, shuffle=shuffle, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                          pin_memory=loader.pin_memory, drop_last=loader.drop_last, generator=g,
                          persistent_workers=False, worker_init_fn=loader.worker_init_fn)

    def _check_layer(self, model: torch.nn.Module, sample: torch.Tensor) -> torch.nn.Module:
        forward = self.forward_fn or default_forward
        try:
            layer = resolve_target_layer(model, self.target_layer, sample, forward_fn=forward, reshape_transform=self.reshape_transform)
        except ValueError as e:
            raise ValueError(f"the model does not match the run's target layer {self.target_layer!r}: {e}") from None
        want = (self.run.prototypes.feature_dim, *self.run.feature_shape)
        if tuple(layer.feature_shape) != want:
            raise ValueError(
                f"the model's target layer {self.target_layer!r} gives feature maps {tuple(layer.feature_shape)} (d, h, w) "
                f"but the run's prototypes were fitted on {want}: fine-tune the model the run was recorded from"
            )
        if layer.num_classes != self.run.num_classes:
            raise ValueError(f"the model has {layer.num_classes} classes, the run {self.run.num_classes}")
        return layer.module

    def _device(self, model: torch.nn.Module) -> torch.device:
        if self.device is not None:
            return self.device
        p = next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # -- the two public steps --------------------------------------------------------------------------
    def select(self, model: torch.nn.Module, train_dataloaders: Any, targets: dict[Pair, list[int]] | None = None) -> Selection:
        """Find the training samples that contain the targeted uncertain prototypes (no training)."""
        loader = self._one_loader(train_dataloaders, "train_dataloaders")
        ds, idx = self._train_dataset(loader)
        targets = self.targets() if targets is None else targets
        x0 = split_item(ds[int(idx[0])], "the training Dataset", "fine-tuning")[0]
        model.to(self._device(model))
        layer = self._check_layer(model, x0.unsqueeze(0).expand(2, *x0.shape).clone())
        with preserved_rng():
            return find_uncertain_samples(
                model, layer, ds, idx, self.run.prototypes, targets,
                batch_size=self.batch_size or loader.batch_size or 256, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                cam=self.cam, cam_target=self.cam_target, threshold=self.saliency_threshold, region=self.mask_region,
                forward_fn=self.forward_fn, reshape_transform=self.reshape_transform, progress=self.progress,
            )

    def curated_dataset(self, dataset: Dataset, selection: Selection) -> Dataset:
        """The curated training set: ``Subset(dataset, kept)`` without the flagged samples (mode
        "remove"), or every searched sample with the flagged regions perturbed (mode "mask")."""
        if self.mode == "remove":
            kept = selection.kept_indices()
            if kept.size == 0:
                raise ValueError("every training sample contains an uncertain prototype: the curated set would be empty")
            return Subset(dataset, kept.tolist())
        regions = {int(i): r for i, r, f in zip(selection.indices, selection.regions, selection.flagged) if f}
        if self.mode == "penalise":
            return Subset(_RegionDataset(dataset, regions), selection.indices.tolist())
        masked = MaskedDataset(dataset, regions, self.mask_fill, seed=self.seed, baseline=self.mask_baseline)
        return Subset(masked, selection.indices.tolist())

    def evaluate(self, model: torch.nn.Module, val_dataloaders: Any) -> tuple[np.ndarray, np.ndarray]:
        """(labels, predictions) of the model on the validation loader, eval mode, no grad."""
        loader = self._one_loader(val_dataloaders, "val_dataloaders")
        device = self._device(model)
        model.to(device)
        forward = self.forward_fn or default_forward
        labels, preds = [], []
        with preserved_rng(), evaluation_mode(model), torch.no_grad():
            for batch in loader:
                x, y = split_batch(batch, "the validation DataLoader")
                out = forward(model, x.to(device))
                preds.append(out.argmax(dim=1).cpu().numpy())
                labels.append(y.numpy())
        if not labels:
            raise ValueError("the validation DataLoader is empty")
        return np.concatenate(labels).astype(np.int64), np.concatenate(preds).astype(np.int64)

    def fit(self, model: pl.LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None, *,
            selection: Selection | None = None) -> FinetuneResult:
        """Measure, select, fine-tune (in place) by the schedule, measure again; save the predictions
        and the result under ``out_dir``. ``selection``: reuse an earlier ``select`` of the same model."""
        t_start = time.perf_counter()
        if not isinstance(model, pl.LightningModule):
            raise TypeError(f"fit needs a LightningModule, got {type(model).__name__}")
        if train_dataloaders is None or val_dataloaders is None:
            raise ValueError("fit needs train_dataloaders and val_dataloaders (accuracy and confusions are measured on the latter)")
        train_loader = self._one_loader(train_dataloaders, "train_dataloaders")
        val_loader = self._one_loader(val_dataloaders, "val_dataloaders")
        ds, idx = self._train_dataset(train_loader)
        x0 = split_item(ds[int(idx[0])], "the training Dataset", "fine-tuning")[0]
        model.to(self._device(model))
        self._check_layer(model, x0.unsqueeze(0).expand(2, *x0.shape).clone())

        targets = self.targets() if selection is None else dict(selection.prototypes)
        by_prototype = ANY_CLASS in targets
        base = dict(pairs=[] if by_prototype else list(targets), class_names=self.class_names, mode=self.mode, schedule=self.schedule,
                    prototypes={} if by_prototype else targets, seed=self.seed, lr=self.lr,
                    mask_fill=self.mask_fill if self.mode == "mask" else None,
                    penalty=self.penalty if self.mode == "penalise" else None,
                    target_prototypes=list(targets.get(ANY_CLASS, [])))
        if not targets or not any(targets.values()):
            if by_prototype:
                reason = ("the run has no shortcut suspect (run_suspects found none): nothing to target"
                          if self.options.prototypes == "suspects" else "no prototype to target")
            elif self.pairs is None:
                reason = (f"the run has no uncertain prototype (min_flips={self.explain.min_flips}, tau={self.explain.tau!r}); "
                          "pass pairs=... or record more checkpoints")
            else:
                reason = f"none of the pairs {[tuple(self.class_names[c] for c in p) for p in self.pairs]} has an uncertain prototype in the run"
            warnings.warn(f"PerturbationFinetuner: {reason}; nothing was fine-tuned", RuntimeWarning, stacklevel=2)
            return FinetuneResult(**base, skipped_reason=reason)
        for p, protos in targets.items():
            if not protos:
                warnings.warn(f"PerturbationFinetuner: pair {self.class_names[p[0]]} <-> {self.class_names[p[1]]} has no "
                              "uncertain prototype in the run; no sample is removed or masked for it", RuntimeWarning, stacklevel=2)

        m = self.run.num_classes
        pairs = [] if by_prototype else list(targets)
        t0 = time.perf_counter()
        labels, pred_before = self.evaluate(model, val_loader)
        seconds = {"evaluate_before": time.perf_counter() - t0}

        needs_curated = "curated" in self.schedule
        if needs_curated and selection is None:
            selection = self.select(model, train_loader, targets)
            seconds["search"] = selection.seconds
        if selection is not None and not np.array_equal(selection.indices, idx):
            raise ValueError("selection was computed on other training samples (max_samples / seed / dataset differ)")

        full = Subset(ds, idx.tolist())
        curated = self.curated_dataset(ds, selection) if needs_curated else None
        n_curated = None if curated is None else len(curated)
        penalised = self.mode == "penalise"
        full_phase = Subset(_RegionDataset(ds, {}), idx.tolist()) if penalised else full
        loaders = [self._loader_like(train_loader, curated if phase == "curated" else full_phase, e)
                   for e, phase in enumerate(self.schedule)]
        control = None
        if self.control:
            control = _detached_copy(model)
            self.control_model = control

        t0 = time.perf_counter()
        weight = None
        if penalised:
            layer = self._check_layer(model, x0.unsqueeze(0).expand(2, *x0.shape).clone()) if self.penalty == "gradcam" else None
            wrapper = _Penalised(model, self.penalty, self.penalty_ratio, layer, self.forward_fn)
            self._train(wrapper, loaders, inner=model)
            weight = wrapper.weight
        else:
            self._train(model, loaders)
        seconds["train"] = time.perf_counter() - t0
        control_fields: dict[str, Any] = {}
        if control is not None:
            t0 = time.perf_counter()
            self._train(control, [self._loader_like(train_loader, full, e) for e in range(len(self.schedule))])
            _, pred_control = self.evaluate(control, val_loader)
            cmc = _confusion_matrix(labels, pred_control, m)
            control_fields = dict(control_accuracy_after=_accuracy(labels, pred_control, m),
                                  control_confusions_after=_pair_confusions(cmc, pairs), control_confusion_matrix_after=cmc)
            seconds["control"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels_after, pred_after = self.evaluate(model, val_loader)
        seconds["evaluate_after"] = time.perf_counter() - t0
        if not np.array_equal(labels, labels_after):
            raise ValueError("the validation DataLoader yields its samples in a different order each time: pass one that does not shuffle")

        cm0, cm1 = _confusion_matrix(labels, pred_before, m), _confusion_matrix(labels, pred_after, m)
        counts = selection.counts() if selection is not None else {p: 0 for p in pairs}
        flagged = counts.get(ANY_CLASS) if by_prototype and needs_curated else (0 if by_prototype else None)
        counts.pop(ANY_CLASS, None)
        seconds["total"] = time.perf_counter() - t_start
        result = FinetuneResult(
            **base, **control_fields, flagged=flagged, penalty_weight=weight,
            removed_or_masked=counts if needs_curated else {p: 0 for p in pairs},
            num_train_samples=int(idx.size), num_curated_samples=n_curated, num_val_samples=int(labels.size),
            accuracy_before=_accuracy(labels, pred_before, m), accuracy_after=_accuracy(labels, pred_after, m),
            confusions_before=_pair_confusions(cm0, pairs), confusions_after=_pair_confusions(cm1, pairs),
            confusion_matrix_before=cm0, confusion_matrix_after=cm1,
            out_dir=str(self.out_dir), seconds=seconds,
        )
        self._save(result, labels, pred_before, pred_after, selection)
        return result

    def _train(self, model: pl.LightningModule, loaders: list[DataLoader], inner: pl.LightningModule | None = None) -> None:
        """Fit ``model`` on the loaders, one epoch each; ``inner``: the user's module inside a
        ``_Penalised`` wrapper (its trainer reference is put back the same way)."""
        owner = inner if inner is not None else model
        device = self._device(owner)
        kw: dict[str, Any] = dict(
            logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=self.progress,
            num_sanity_val_steps=0, limit_val_batches=0,
        )
        if device.type == "cuda":
            kw.update(accelerator="gpu", devices=[device.index or 0])
        elif device.type == "mps":
            kw.update(accelerator="mps", devices=1)
        else:
            kw.update(accelerator="cpu", devices=1)
        kw.update(self.trainer_kwargs)
        callbacks = [_SetLearningRate(float(self.lr))] if self.lr is not None else []
        previous = getattr(owner, "_trainer", None)
        with preserved_rng(), _quiet_lightning(self.progress):
            trainer = pl.Trainer(max_epochs=len(loaders), reload_dataloaders_every_n_epochs=1, callbacks=callbacks, **kw)
            torch.manual_seed(self.seed)
            np.random.seed(self.seed % 2**32)
            random.seed(self.seed)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", ".*validation_step.*no `val_dataloader`.*")
                    trainer.fit(model, datamodule=_PhaseData(loaders))
            finally:
                owner._trainer = previous  # an outer Trainer (auto_finetune) keeps its module
        owner.to(device)

    def _save(self, result: FinetuneResult, labels, pred_before, pred_after, selection: Selection | None) -> None:
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        write_npz(out / "predictions.npz", labels=labels.astype(np.int64), pred_before=pred_before.astype(np.int64),
                         pred_after=pred_after.astype(np.int64))
        if selection is not None:
            write_npz(out / "selection.npz", indices=selection.indices.astype(np.int64),
                             pairs=np.asarray(selection.pairs, dtype=np.int64).reshape(-1, 2),
                             flags=selection.flags.astype(np.uint8), labels=selection.labels.astype(np.int64))
        write_json(out / "result.json", result.to_dict())


# -- penalise mode ----------------------------------------------------------------------------------
class _RegionDataset(Dataset):
    """(image, label, mask) samples: ``mask`` (H, W) float32, 1 on the pixels of the flagged
    region of that sample (``regions``: dataset index -> (h, w) location mask), 0 elsewhere."""

    def __init__(self, dataset: Dataset, regions: dict[int, np.ndarray]):
        self.dataset = dataset
        self.regions = {int(k): np.asarray(v, dtype=bool) for k, v in regions.items()}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, rest = split_item(self.dataset[index], "the training Dataset", "fine-tuning")
        size = tuple(x.shape[-2:])
        region = self.regions.get(int(index))
        mask = (torch.from_numpy(pixel_mask(region, size)).float() if region is not None and region.any()
                else torch.zeros(size, dtype=torch.float32))
        return x, rest[0], mask


class _Penalised(pl.LightningModule):
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
        ce = F.cross_entropy(logits.float(), y)
        loss = ce
        if pen is not None:
            if self.weight is None and float(pen.detach()) > 0:
                self.weight = balance_weight(ce, pen, self.ratio)
            if self.weight is not None:
                loss = ce + self.weight * pen
        self.log("finetune_loss", loss.detach(), prog_bar=True)
        return loss

    def configure_optimizers(self):
        self.module._trainer = self._trainer  # a configure_optimizers that reads self.trainer (schedulers) works
        return self.module.configure_optimizers()


def _detached_copy(model: pl.LightningModule) -> pl.LightningModule:
    """A deep copy of the module without its Trainer (which must not be copied)."""
    previous = getattr(model, "_trainer", None)
    model._trainer = None
    try:
        return copy.deepcopy(model)
    finally:
        model._trainer = previous


# -- the end of a fit, and reporting -------------------------------------------------------------------
def finetune_after_fit(trainer: pl.Trainer, module: pl.LightningModule, run: I2XRun, explanation: Explanation | None,
                       options: FinetuneOptions, forward_fn: ForwardFn | None = None,
                       reshape_transform: Callable | None = None) -> FinetuneResult:
    """``I2XCallback(auto_finetune=True)``: Step 7 on the trainer's own dataloaders, the module
    fine-tuned in place on the trainer's device and precision (the callback logs the result)."""
    kw = options.to_dict()
    kw["trainer_kwargs"] = {"precision": trainer.precision, **kw["trainer_kwargs"]}
    finetuner = PerturbationFinetuner(
        run, **kw, explanation=explanation, forward_fn=forward_fn, reshape_transform=reshape_transform,
        device=trainer.strategy.root_device, progress=trainer.progress_bar_callback is not None,
    )
    result = finetuner.fit(module, train_dataloaders=trainer.train_dataloader, val_dataloaders=trainer.val_dataloaders)
    return result
