"""Step 7 of the method: perturbation fine-tuning targeted by the uncertain prototypes.

An uncertain prototype of the class pair (a, b) is evidence the model kept reassigning between a
and b. The training samples that *contain* it (images of class a or b whose salient region, under
the model being fine-tuned, holds a location assigned to it) are the ones that confuse the model.
``PerturbationFinetuner`` finds them (``_search``), fine-tunes on the curated set by the schedule
(``_data``, ``_trainer``) and measures the validation set before and after (``_counting``); this
module only orchestrates those steps. ``FinetuneOptions`` says what it does: ``mode="remove"``
(the paper), ``"mask"`` or ``"penalise"``; pairs or prototypes in every class (a shortcut); a
same-budget control.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .._core import write_json, write_npz
from .._model import ForwardFn, preserved_rng
from ..analysis import Explanation, resolve_pairs
from ..errors import I2XRunError
from ..options import FinetuneOptions
from ..saliency import CAM_METHODS
from ..store import I2XRun
from ._counting import accuracy, confusion_matrix, pair_confusions, predictions
from ._data import RegionDataset, curate, layer_sample, loader_like, one_loader, training_samples
from ._latent import LatentBasis, LatentModule, basis_from_model, frozen_except, parameters_after
from ._layer import run_target_layer
from ._result import FinetuneResult, gain_intervals
from ._search import Selection, find_uncertain_samples
from ._targets import PairTarget, PrototypeTarget, Target, pair_targets, prototype_target
from ._trainer import PenalisedModule, detached_copy, fit_schedule

__all__ = ["PerturbationFinetuner", "finetune_after_fit"]

_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(FinetuneOptions))
_REMOVED = {"explain_kwargs": "explain=ExplainOptions(...)", "saliency_threshold": "explain=ExplainOptions(saliency_threshold=...)"}


def _moved_keywords(kwargs: dict[str, Any]) -> TypeError:
    """The error for the 0.1 keywords, naming where each went: the options are one group now."""
    unknown = sorted(set(kwargs) - _OPTION_NAMES - set(_REMOVED))
    if unknown:
        return TypeError(f"PerturbationFinetuner() got an unexpected keyword argument {unknown[0]!r}")
    old = ", ".join(f"{k}=" for k in kwargs)
    new = ", ".join(_REMOVED.get(k, f"{k}=...") for k in kwargs)
    return TypeError(f"PerturbationFinetuner no longer takes {old}: its options are one group, "
                     f"PerturbationFinetuner(run, options=FinetuneOptions({new}))")


class PerturbationFinetuner:
    """Fine-tune a model on a training set curated by a run's uncertain prototypes (Step 7).

    Args:
        run: the ``I2XRun`` (or its directory) whose prototypes and explanation pick the samples.
        options: ``FinetuneOptions``, what to target and how to fine-tune (each field documented
            and checked there).
        explanation: the run's current explanation, when the caller holds it (the callback does);
            otherwise it is computed once from the run with ``options.explain``.
        forward_fn, reshape_transform: as for ``I2XCallback``.
        device: where the search and the evaluation run (and the Trainer's accelerator); default
            the model's device.
        progress: tqdm progress bars (and Lightning's start-up lines).

    Raises:
        ValueError: unknown classes in ``options.pairs``, unknown ids in ``options.prototypes``,
            ``penalty="gradcam"`` with a ``reshape_transform``.
        I2XRunError: a run with no prototypes or no recorded target layer; ``prototypes="suspects"``
            on a run with no stored reliance.
        TypeError: options that are not a ``FinetuneOptions``, or the 0.1 keywords (``pairs=``,
            ``mode=``, ...), with the new spelling.

    ``fit`` fine-tunes the module **in place** (as ``Trainer.fit`` does); copy it first to keep the
    original weights.
    """

    def __init__(
        self,
        run: I2XRun | str | Path,
        options: FinetuneOptions = FinetuneOptions(),
        *,
        explanation: Explanation | None = None,
        forward_fn: ForwardFn | None = None,
        reshape_transform: Callable | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        **moved: Any,
    ):
        if moved:
            raise _moved_keywords(moved)
        if not isinstance(options, FinetuneOptions):
            raise TypeError(f"PerturbationFinetuner.options must be a FinetuneOptions, got {type(options).__name__}: "
                            "pass options=FinetuneOptions(pairs=..., mode=...)")
        self.options = options
        self.run = run if isinstance(run, I2XRun) else I2XRun.load(run)
        if self.run.prototypes is None:
            raise I2XRunError(f"{self.run.path} has no prototypes yet (no checkpoint recorded): nothing to target")
        config = self.run.config
        if config is None:
            raise I2XRunError(f"{self.run.path} does not record its configuration (target layer, CAM method): "
                              "record it with I2XCallback")
        if options.penalty == "gradcam" and reshape_transform is not None:
            raise ValueError("penalty='gradcam' needs a target layer with (B, D, h, w) maps; with a reshape_transform "
                             "use penalty='input_gradient'")
        if options.mode == "latent" and reshape_transform is not None:
            raise ValueError("mode='latent' needs a target layer with (B, D, h, w) maps; with a reshape_transform use mode='penalise'")
        self.explain = options.explain if options.explain is not None else config.explain
        self._explanation = explanation
        self.pairs = None if options.pairs is None else resolve_pairs(options.pairs, self.run.class_names)
        self.prototype_target = prototype_target(self.run, options.prototypes)
        self.forward_fn = forward_fn
        self.reshape_transform = reshape_transform
        self.device = None if device is None else torch.device(device)
        self.progress = progress
        self.out_dir = Path(options.out_dir) if options.out_dir is not None else self.run.path / "finetune"
        # the search runs over the whole training set: an optimised saliency (igos) there would cost
        # thousands of passes per image, so those runs are searched with the native GradCAM
        self.cam = config.cam if config.cam in CAM_METHODS and not config.cam.startswith("igos") else "gradcam"
        self.control_model: pl.LightningModule | None = None

    @property
    def explanation(self) -> Explanation:
        """The explanation the targets come from (computed once when none was passed)."""
        if self._explanation is None:
            self._explanation = self.run.explain(self.explain)
        return self._explanation

    def targets(self) -> list[Target]:
        """The ``PrototypeTarget`` of ``options.prototypes``, else each targeted pair with its
        uncertain prototypes (an empty list when the explanation has no uncertain pair)."""
        if self.prototype_target is not None:
            return [self.prototype_target]
        return pair_targets(self.explanation, self.pairs, self.options.top_pairs, self.options.prototypes_per_pair)

    # -- the public steps ------------------------------------------------------------------------------
    def select(self, model: torch.nn.Module, train_dataloaders: Any, targets: list[Target] | None = None) -> Selection:
        """Find the training samples that hold the targeted prototypes (no training)."""
        loader = one_loader(train_dataloaders, "train_dataloaders")
        ds, idx = training_samples(loader, self.options.max_samples, self.options.seed)
        model.to(self._device(model))
        layer = self._target_layer(model, ds, idx)
        return self._search(model, layer, loader, ds, idx, self.targets() if targets is None else targets)

    def curated_dataset(self, dataset: Dataset, selection: Selection) -> Dataset:
        """The curated training set of ``options.mode`` (``_data.curate``)."""
        return curate(dataset, selection, self.options)

    def evaluate(self, model: torch.nn.Module, val_dataloaders: Any) -> tuple[np.ndarray, np.ndarray]:
        """(labels, predictions) of the model on the validation loader, eval mode, no grad."""
        return predictions(model, one_loader(val_dataloaders, "val_dataloaders"), self._device(model), self.forward_fn)

    def fit(self, model: pl.LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None, *,
            selection: Selection | None = None) -> FinetuneResult:
        """Measure, select, fine-tune (in place) by the schedule, measure again; save the predictions
        and the result under ``out_dir``. ``selection``: reuse an earlier ``select`` of the same model."""
        t_start = time.perf_counter()
        if not isinstance(model, pl.LightningModule):
            raise TypeError(f"fit needs a LightningModule, got {type(model).__name__}")
        if train_dataloaders is None or val_dataloaders is None:
            raise ValueError("fit needs train_dataloaders and val_dataloaders (accuracy and confusions are measured on the latter)")
        o = self.options
        train_loader = one_loader(train_dataloaders, "train_dataloaders")
        val_loader = one_loader(val_dataloaders, "val_dataloaders")
        ds, idx = training_samples(train_loader, o.max_samples, o.seed)
        device = self._device(model)
        model.to(device)
        layer = self._target_layer(model, ds, idx)  # once: the search and the GradCAM penalty both use it

        targets = self.targets() if selection is None else list(selection.targets)
        latent = o.mode == "latent"
        base = dict(targets=targets, class_names=self.run.class_names, mode=o.mode, schedule=o.schedule, seed=o.seed, lr=o.lr,
                    mask_fill=o.mask_fill if o.mode == "mask" else None, penalty=o.penalty if o.mode == "penalise" else None,
                    latent_layers=o.latent_layers if latent else None)
        reason = self._nothing_to_target(targets)
        if reason is not None:
            return self._skip(base, reason)
        pairs = [t.classes for t in targets if isinstance(t, PairTarget)]
        for t in targets:
            if isinstance(t, PairTarget) and not t.prototypes:
                a, b = (self.run.class_names[c] for c in t.classes)
                warnings.warn(f"PerturbationFinetuner: pair {a} <-> {b} has no uncertain prototype in the run; no sample is "
                              "removed or masked for it", RuntimeWarning, stacklevel=2)

        m = self.run.num_classes
        seconds: dict[str, float] = {}
        needs_curated = "curated" in o.schedule and not latent
        basis = None
        if latent and "curated" in o.schedule:
            t0 = time.perf_counter()
            basis = self._latent_basis(model, layer, train_loader, ds, idx, targets, device)
            seconds["basis"] = time.perf_counter() - t0
            if basis.rank == 0:
                return self._skip(base, f"no location of {len(self._latent_indices(idx))} training images at the target layer is "
                                        f"assigned to the targeted prototypes {self._target_ids(targets)}: no direction to penalise")
        if needs_curated and selection is None:
            selection = self._search(model, layer, train_loader, ds, idx, targets)
            seconds["search"] = selection.seconds
        if selection is not None and not np.array_equal(selection.indices, idx):
            raise ValueError("selection was computed on other training samples (max_samples / seed / dataset differ)")
        if needs_curated and not selection.flagged.any():
            return self._skip(base, self._flagged_nothing(targets, int(idx.size)))

        t0 = time.perf_counter()
        labels, pred_before = predictions(model, val_loader, device, self.forward_fn)
        seconds["evaluate_before"] = time.perf_counter() - t0

        full = Subset(ds, idx.tolist())
        curated = curate(ds, selection, o) if needs_curated else None
        penalised = o.mode == "penalise"
        full_phase = Subset(RegionDataset(ds, {}), idx.tolist()) if penalised else full
        loaders = [loader_like(train_loader, curated if phase == "curated" and curated is not None else full_phase, o.seed, e)
                   for e, phase in enumerate(o.schedule)]
        control = detached_copy(model) if o.control else None
        self.control_model = control

        t0 = time.perf_counter()
        weight = None
        if penalised:
            wrapper = PenalisedModule(model, o.penalty, o.penalty_ratio, layer if o.penalty == "gradcam" else None, self.forward_fn)
            self._fit_schedule(wrapper, loaders, device, owner=model)
            weight = wrapper.weight
        elif basis is not None:
            wrapper = LatentModule(model, layer, basis.basis, o.penalty_ratio, o.schedule, o.seed, self.forward_fn)
            trainable = (parameters_after(model, layer, layer_sample(ds, idx).to(device), self.forward_fn)
                         if o.latent_layers == "after" else None)
            if trainable is not None and not trainable:
                raise ValueError("latent_layers='after' but no parameter lies after the target layer: use latent_layers='all'")
            with frozen_except(model, trainable):
                self._fit_schedule(wrapper, loaders, device, owner=model)
            weight = wrapper.weight
        else:
            self._fit_schedule(model, loaders, device)
        seconds["train"] = time.perf_counter() - t0
        control_fields: dict[str, Any] = {}
        pred_control = None
        if control is not None:
            t0 = time.perf_counter()
            self._fit_schedule(control, [loader_like(train_loader, full, o.seed, e) for e in range(len(o.schedule))], device)
            _, pred_control = predictions(control, val_loader, device, self.forward_fn)
            cmc = confusion_matrix(labels, pred_control, m)
            control_fields = dict(control_accuracy_after=accuracy(labels, pred_control, m),
                                  control_confusions_after=pair_confusions(cmc, pairs), control_confusion_matrix_after=cmc)
            seconds["control"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels_after, pred_after = predictions(model, val_loader, device, self.forward_fn)
        seconds["evaluate_after"] = time.perf_counter() - t0
        if not np.array_equal(labels, labels_after):
            raise ValueError("the validation DataLoader yields its samples in a different order each time: pass one that does not shuffle")

        cm0, cm1 = confusion_matrix(labels, pred_before, m), confusion_matrix(labels, pred_after, m)
        counts = selection.counts() if needs_curated else {t: 0 for t in targets}
        by_prototype = any(isinstance(t, PrototypeTarget) for t in targets)
        seconds["total"] = time.perf_counter() - t_start
        result = FinetuneResult(
            **base, **control_fields, penalty_weight=weight,
            removed_or_masked={t.classes: n for t, n in counts.items() if isinstance(t, PairTarget)} if not latent else {},
            flagged=sum(n for t, n in counts.items() if isinstance(t, PrototypeTarget)) if by_prototype and not latent else None,
            num_train_samples=int(idx.size), num_curated_samples=None if curated is None else len(curated),
            num_val_samples=int(labels.size),
            accuracy_before=accuracy(labels, pred_before, m), accuracy_after=accuracy(labels, pred_after, m),
            confusions_before=pair_confusions(cm0, pairs), confusions_after=pair_confusions(cm1, pairs),
            confusion_matrix_before=cm0, confusion_matrix_after=cm1,
            out_dir=str(self.out_dir), seconds=seconds, gains=gain_intervals(labels, pred_before, pred_after, pred_control, o.seed),
            latent_rank=None if basis is None else basis.rank,
        )
        self._save(result, labels, pred_before, pred_after, selection, pred_control, basis)
        return result

    def latent_basis(self, model: torch.nn.Module, train_dataloaders: Any, targets: list[Target] | None = None) -> LatentBasis:
        """The targeted prototypes' centred subspace at the target layer of ``model`` (no training):
        what ``mode="latent"`` penalises and what ``project_out`` removes (P-ClArC). The features
        are recomputed at the target layer on ``options.latent_samples`` training images."""
        loader = one_loader(train_dataloaders, "train_dataloaders")
        ds, idx = training_samples(loader, self.options.max_samples, self.options.seed)
        device = self._device(model)
        model.to(device)
        layer = self._target_layer(model, ds, idx)
        return self._latent_basis(model, layer, loader, ds, idx, self.targets() if targets is None else targets, device)

    # -- the steps' parts ------------------------------------------------------------------------------
    def _nothing_to_target(self, targets: list[Target]) -> str | None:
        """Why there is nothing to fine-tune against (None when some target has prototypes)."""
        if any(t.prototypes for t in targets):
            return None
        if any(isinstance(t, PrototypeTarget) for t in targets):
            return ("the run has no shortcut suspect (run_suspects found none): nothing to target"
                    if self.options.prototypes == "suspects" else "no prototype to target")
        if self.pairs is None:
            return (f"the run has no uncertain prototype (min_flips={self.explain.min_flips}, tau={self.explain.tau!r}); "
                    "pass FinetuneOptions(pairs=...) or record more checkpoints")
        names = [tuple(self.run.class_names[c] for c in p) for p in self.pairs]
        return f"none of the pairs {names} has an uncertain prototype in the run"

    def _skip(self, base: dict[str, Any], reason: str) -> FinetuneResult:
        """Nothing is trained: a RuntimeWarning and a result that says why (the weights are untouched)."""
        warnings.warn(f"PerturbationFinetuner: {reason}; nothing was fine-tuned", RuntimeWarning, stacklevel=3)
        return FinetuneResult(**base, skipped_reason=reason)

    @staticmethod
    def _target_ids(targets: list[Target]) -> list[int]:
        return sorted({k for t in targets for k in t.prototypes})

    def _flagged_nothing(self, targets: list[Target], searched: int) -> str:
        what = ", ".join(f"P-{k}" for k in self._target_ids(targets))
        if any(isinstance(t, PairTarget) for t in targets):
            names = ", ".join(" <-> ".join(self.run.class_names[c] for c in t.classes) for t in targets if isinstance(t, PairTarget))
            return (f"the targeted prototypes ({what}) flag no training sample of the pairs {names} among the {searched} searched "
                    "(no sample of those classes holds one at a salient location): nothing to remove, mask or penalise")
        where = "anywhere" if self.options.mask_region == "all" else "at a salient location (mask_region='all' looks everywhere)"
        return f"no training sample of the {searched} searched holds the targeted prototypes ({what}) {where}: nothing to remove, mask or penalise"

    def _latent_indices(self, idx: np.ndarray) -> np.ndarray:
        n = self.options.latent_samples
        if idx.size <= n:
            return idx
        g = np.random.default_rng([self.options.seed, 31])
        return np.sort(g.choice(idx, size=n, replace=False))

    def _latent_basis(self, model: torch.nn.Module, layer: torch.nn.Module, loader: DataLoader, dataset: Dataset,
                      idx: np.ndarray, targets: list[Target], device: torch.device) -> LatentBasis:
        return basis_from_model(model, layer, dataset, self._latent_indices(idx), self.run.prototypes, self._target_ids(targets),
                                directions=self.options.latent_directions, batch_size=self.options.batch_size or loader.batch_size or 256,
                                collate_fn=loader.collate_fn, device=device, forward_fn=self.forward_fn)

    def _target_layer(self, model: torch.nn.Module, dataset: Dataset, indices: np.ndarray) -> torch.nn.Module:
        return run_target_layer(model, self.run, layer_sample(dataset, indices), forward_fn=self.forward_fn,
                                reshape_transform=self.reshape_transform)

    def _search(self, model: torch.nn.Module, layer: torch.nn.Module, loader: DataLoader, dataset: Dataset,
                indices: np.ndarray, targets: list[Target]) -> Selection:
        with preserved_rng():
            return find_uncertain_samples(
                model, layer, dataset, indices, self.run.prototypes, targets,
                batch_size=self.options.batch_size or loader.batch_size or 256, num_workers=loader.num_workers,
                collate_fn=loader.collate_fn, cam=self.cam, cam_target=self.run.config.probe_pass.cam_target,
                threshold=self.explain.saliency_threshold, region=self.options.mask_region,
                forward_fn=self.forward_fn, reshape_transform=self.reshape_transform, progress=self.progress,
            )

    def _fit_schedule(self, model: pl.LightningModule, loaders: list[DataLoader], device: torch.device,
                      owner: pl.LightningModule | None = None) -> None:
        o = self.options
        fit_schedule(model, loaders, device=device, lr=o.lr, seed=o.seed, progress=self.progress,
                     trainer_kwargs=o.trainer_kwargs, owner=owner)

    def _device(self, model: torch.nn.Module) -> torch.device:
        if self.device is not None:
            return self.device
        p = next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _save(self, result: FinetuneResult, labels, pred_before, pred_after, selection: Selection | None,
              pred_control: np.ndarray | None = None, basis: LatentBasis | None = None) -> None:
        """predictions.npz (pred_control too with a control), selection.npz (flags rows in the order
        of result.json's targets), latent_basis.npz (latent mode) and result.json, written last."""
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        extra = {} if pred_control is None else {"pred_control": pred_control.astype(np.int64)}
        write_npz(out / "predictions.npz", labels=labels.astype(np.int64), pred_before=pred_before.astype(np.int64),
                  pred_after=pred_after.astype(np.int64), **extra)
        if basis is not None:
            write_npz(out / "latent_basis.npz", **basis.to_arrays())
        if selection is not None:
            pairs = [t.classes for t in selection.targets if isinstance(t, PairTarget)]
            write_npz(out / "selection.npz", indices=selection.indices.astype(np.int64),
                      pairs=np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
                      flags=selection.flags.astype(np.uint8), labels=selection.labels.astype(np.int64))
        write_json(out / "result.json", result.to_dict())


def finetune_after_fit(trainer: pl.Trainer, module: pl.LightningModule, run: I2XRun, explanation: Explanation | None,
                       options: FinetuneOptions, forward_fn: ForwardFn | None = None,
                       reshape_transform: Callable | None = None) -> FinetuneResult:
    """``I2XCallback(auto_finetune=True)``: Step 7 on the trainer's own dataloaders, the module
    fine-tuned in place on the trainer's device and precision (the callback logs the result)."""
    options = dataclasses.replace(options, trainer_kwargs={"precision": trainer.precision, **options.trainer_kwargs})
    finetuner = PerturbationFinetuner(
        run, options, explanation=explanation, forward_fn=forward_fn, reshape_transform=reshape_transform,
        device=trainer.strategy.root_device, progress=trainer.progress_bar_callback is not None,
    )
    return finetuner.fit(module, train_dataloaders=trainer.train_dataloader, val_dataloaders=trainer.val_dataloaders)
