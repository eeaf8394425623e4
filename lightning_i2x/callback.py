"""``I2XCallback``: thin Lightning glue around the probe pass, the prototypes and the analysis."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from .cam import CAM_METHODS, ForwardFn, probe_batches
from .explanation import Explanation
from .finetune import (
    FinetuneResult,
    PerturbationFinetuner,
    check_finetune_kwargs,
    log_finetune,
)
from .guards import preserved_rng
from .layers import TargetLayer, resolve_target_layer
from .probe import materialise_probe, probe_fingerprint
from .prototypes import Prototypes, fit_prototypes
from .run import I2XRun
from .selection import resolve_pairs
from .views import ViewOptions, log_figures, log_summary

__all__ = ["I2XCallback"]

_MAX_STORED_PROBE_BYTES = 64 * 2**20


class I2XCallback(pl.Callback):
    """Record I2X evidence at validation epoch ends and keep the structured explanation current.

    Args:
        probe: the fixed probe set: a Dataset, a DataLoader or an ``(images, labels)`` pair.
        target_layer: dotted module path (``"layer4"``, ``"features.7"``) or the module itself;
            None picks the last module with a 4-D output.
        num_prototypes: K, the number of abstract prototypes.
        every_n_epochs: record at validation ends of every n-th epoch.
        cam: ``"gradcam"`` (native fast path) or a pytorch-grad-cam method name.
        cam_target: ``"label"`` (true class) or ``"predicted"``.
        run_dir: where the run is written; default ``<trainer.log_dir>/i2x``.
        reshape_transform: maps a token-sequence output to (N, C, H, W), as in pytorch-grad-cam.
        on_error: ``"warn"``: an explainer failure is warned about once, recorded in the run, and
            training goes on; ``"raise"``: it stops training.
        class_names: names of the M classes; default the probe dataset's ``classes`` or indices.
        probe_batch_size: probe images per forward; bounds the explainer's memory.
        pca_components, kmeans_iters, seed: prototype fitting (PCA dimension, k-means iterations,
            k-means seed).
        normalise_maps: min-max normalise each map (pytorch-grad-cam's convention); False keeps
            raw GradCAM values (native path only).
        forward_fn: ``forward_fn(model, images) -> scores`` for models whose ``forward`` needs
            more than the images.
        explain_kwargs: parameters for ``I2XRun.explain`` (ridge_lambda, tau, min_flips, ...).
        store_probe_images: keep the probe images (float16) in the run for galleries and reports
            when they take at most 64 MiB.
        log_views: with a TensorBoardLogger, also write the images (prototype gallery, Fig. 3-5
            views, ridge heat map, GradCAM overlays) at each checkpoint; False writes scalars and
            text only. Tags and sizes: ``lightning_i2x.views``.
        view_classes: the classes drawn (indices or names); None picks up to ``max_view_classes``:
            those of the confused pairs drawn, then the least confident classes.
        max_view_classes, max_view_pairs: bounds on the classes and confused pairs drawn per
            checkpoint (3 and 2 keep a 10-class run readable and its event file small).
        overlay_samples: probe images per drawn class in the GradCAM overlay (0: none).
        gallery_patches: input patches per prototype in the gallery (0: no gallery).
        view_dpi: resolution of the images (60: a 6-inch figure is 360 pixels wide).
        view_time_budget: the images of a checkpoint are drawn only when the last drawing took at
            most this fraction of the time since it ended, so drawing stays a bounded share of
            training on short epochs; scalars and text are written at every checkpoint, and the
            end of fit draws the latest explanation if its images were skipped. None: always draw.
        auto_finetune: at the end of fit (rank 0), run Step 7: ``PerturbationFinetuner`` on the
            run, fine-tuning the trained module **in place** with the trainer's train and val
            dataloaders; logs ``i2x/finetune/...`` (accuracy before/after, per-pair confusions,
            confusion matrices as images) to TensorBoard and writes ``<run>/finetune/``. The
            result is kept in ``finetune_result``. Single-process fits only.
        finetune_kwargs: arguments for ``PerturbationFinetuner`` (pairs, mode, schedule, lr,
            max_samples, seed, mask_fill, ...), checked at construction.
    """

    def __init__(
        self,
        probe: Any,
        target_layer: str | torch.nn.Module | None = None,
        num_prototypes: int = 32,
        every_n_epochs: int = 1,
        cam: str = "gradcam",
        cam_target: str = "label",
        run_dir: str | os.PathLike | None = None,
        reshape_transform: Callable | None = None,
        on_error: str = "warn",
        *,
        class_names: list[str] | None = None,
        probe_batch_size: int = 256,
        pca_components: int = 64,
        kmeans_iters: int = 20,
        seed: int = 0,
        normalise_maps: bool = True,
        forward_fn: ForwardFn | None = None,
        explain_kwargs: dict | None = None,
        store_probe_images: bool = True,
        log_views: bool = True,
        view_classes: list[int | str] | None = None,
        max_view_classes: int = 3,
        max_view_pairs: int = 2,
        overlay_samples: int = 2,
        gallery_patches: int = 8,
        view_dpi: int = 60,
        view_time_budget: float | None = 0.02,
        auto_finetune: bool = False,
        finetune_kwargs: dict | None = None,
    ):
        super().__init__()
        if cam not in CAM_METHODS:
            raise ValueError(f"cam={cam!r} is not a known CAM method; choose one of {sorted(CAM_METHODS)}")
        if cam_target not in ("label", "predicted"):
            raise ValueError(f"cam_target must be 'label' or 'predicted', got {cam_target!r}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        for name, value in (("num_prototypes", num_prototypes), ("every_n_epochs", every_n_epochs),
                            ("probe_batch_size", probe_batch_size), ("pca_components", pca_components),
                            ("kmeans_iters", kmeans_iters)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not normalise_maps and cam != "gradcam":
            raise ValueError("normalise_maps=False needs cam='gradcam' (pytorch-grad-cam always normalises)")
        if forward_fn is not None and cam != "gradcam":
            raise ValueError("forward_fn needs cam='gradcam' (pytorch-grad-cam calls model(images))")
        for name, value in (("max_view_classes", max_view_classes), ("max_view_pairs", max_view_pairs),
                            ("overlay_samples", overlay_samples), ("gallery_patches", gallery_patches)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(view_dpi, int) or isinstance(view_dpi, bool) or not 20 <= view_dpi <= 300:
            raise ValueError(f"view_dpi must be an integer in [20, 300], got {view_dpi!r}")
        if view_classes is not None and (isinstance(view_classes, (str, int)) or not view_classes or not all(
                isinstance(c, (str, int)) and not isinstance(c, bool) for c in view_classes)):
            raise ValueError(f"view_classes must be a non-empty list of class indices or names, got {view_classes!r}")
        if view_time_budget is not None and not (isinstance(view_time_budget, (int, float)) and 0 < view_time_budget <= 1):
            raise ValueError(f"view_time_budget must be a fraction in (0, 1] or None, got {view_time_budget!r}")
        if not isinstance(auto_finetune, bool):
            raise ValueError(f"auto_finetune must be True or False, got {auto_finetune!r}")
        if finetune_kwargs is not None and not isinstance(finetune_kwargs, dict):
            raise ValueError(f"finetune_kwargs must be a dict, got {type(finetune_kwargs).__name__}")
        if finetune_kwargs and not auto_finetune:
            raise ValueError("finetune_kwargs given without auto_finetune=True")
        self.auto_finetune = auto_finetune
        self.finetune_kwargs = check_finetune_kwargs(finetune_kwargs)
        self.finetune_result: FinetuneResult | None = None
        self.probe = probe
        self.target_layer = target_layer
        self.num_prototypes = num_prototypes
        self.every_n_epochs = every_n_epochs
        self.cam = cam
        self.cam_target = cam_target
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.reshape_transform = reshape_transform
        self.on_error = on_error
        self.class_names = class_names
        self.probe_batch_size = probe_batch_size
        self.pca_components = pca_components
        self.kmeans_iters = kmeans_iters
        self.seed = seed
        self.normalise_maps = normalise_maps
        self.forward_fn = forward_fn
        self.explain_kwargs = dict(explain_kwargs or {})
        self.store_probe_images = store_probe_images
        self.view_options = ViewOptions(
            figures=bool(log_views), classes=None if view_classes is None else tuple(view_classes), max_classes=max_view_classes,
            max_pairs=max_view_pairs, overlay_samples=overlay_samples, gallery_patches=gallery_patches, dpi=view_dpi,
        )
        self.view_time_budget = view_time_budget
        self._views_cost = 0.0  # seconds the last drawing took
        self._views_end: float | None = None  # when it ended (perf_counter)
        self._views_pending = False  # the latest explanation's images were skipped
        self._run: I2XRun | None = None
        self._layer: TargetLayer | None = None
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._warned: set[tuple[str, str]] = set()
        self._resume_state: dict[str, Any] | None = None
        self._run_path: Path | None = None
        self.explanation: Explanation | None = None

    # -- public state ---------------------------------------------------------------------------
    @property
    def run(self) -> I2XRun | None:
        """The live ``I2XRun`` (None before ``setup`` and on ranks other than 0)."""
        return self._run

    @property
    def state_key(self) -> str:
        return self._generate_state_key(run_dir=str(self.run_dir), target_layer=str(self.target_layer))

    def state_dict(self) -> dict[str, Any]:
        """What a resumed fit needs to continue the same run: where it is, how many checkpoints
        the Lightning checkpoint covers, and the prototypes current at that moment."""
        run = self._run
        state: dict[str, Any] = {
            "run_dir": None if run is None else str(run.path),
            "num_checkpoints": 0 if run is None else run.num_checkpoints,
            "fingerprint": None if run is None else run.fingerprint,
        }
        if run is not None and run.prototypes is not None:
            state["prototypes"] = {k: torch.from_numpy(np.asarray(v)) for k, v in run.prototypes.to_arrays().items()}
            state["assignment"] = torch.from_numpy(run.assignment().astype(np.int32))
            state["reference"] = run.reference
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = dict(state_dict)

    # -- setup: every check before the first training step -------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._images is None:
            self._images, self._labels, dataset_names = materialise_probe(self.probe)
            self._dataset_class_names = dataset_names
        forward = self.forward_fn or (lambda model, x: model(x))
        self._layer = resolve_target_layer(
            pl_module, self.target_layer, self._images[:2], forward_fn=forward, reshape_transform=self.reshape_transform
        )
        m = self._layer.num_classes
        labels = self._labels
        if labels.min() < 0 or labels.max() >= m:
            bad = labels[(labels < 0) | (labels >= m)].unique()[:5].tolist()
            raise ValueError(f"probe labels {bad} lie outside the model's {m} classes [0, {m})")
        d, h, w = self._layer.feature_shape
        locations = self._images.shape[0] * h * w
        if self.num_prototypes > locations:
            raise ValueError(
                f"num_prototypes={self.num_prototypes} exceeds the {locations} probe feature vectors "
                f"({self._images.shape[0]} images x {h}x{w} locations at {self._layer.name!r}): lower it or enlarge the probe"
            )
        names = self.class_names or self._dataset_class_names or [str(c) for c in range(m)]
        if len(names) != m:
            raise ValueError(f"{len(names)} class names for a model with {m} classes")
        self._class_names = [str(c) for c in names]
        unknown = [c for c in self.view_options.classes or ()
                   if (c not in self._class_names if isinstance(c, str) else not 0 <= c < m)]
        if unknown:
            raise ValueError(f"view_classes {unknown} are not classes of this model; its classes are {self._class_names} (or indices 0..{m - 1})")
        if trainer.world_size > 1 and self.cam != "gradcam":
            raise ValueError(
                f"cam={self.cam!r} cannot run in {trainer.world_size} processes: pytorch-grad-cam backpropagates "
                "into every parameter, which DDP would reduce across ranks; use cam='gradcam' (the native path "
                "stops at the target layer)"
            )
        if self.auto_finetune:
            if trainer.world_size > 1:
                raise ValueError(
                    f"auto_finetune runs at the end of fit in one process; this fit runs in {trainer.world_size}: "
                    "fine-tune afterwards with lightning_i2x.PerturbationFinetuner on one device"
                )
            if self.finetune_kwargs.get("pairs") is not None:
                resolve_pairs(self.finetune_kwargs["pairs"], self._class_names)
        if trainer.is_global_zero and self._run is None:
            self._run_path = self.run_dir if self.run_dir is not None else Path(trainer.log_dir or trainer.default_root_dir) / "i2x"
            _check_writable(self._run_path)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_run(trainer)

    def _ensure_run(self, trainer: pl.Trainer) -> None:
        """Open the run once Lightning has restored this callback's state (after ``setup``):
        a resumed fit continues its run directory, a new one starts a run."""
        if not trainer.is_global_zero or self._run is not None:
            return
        resume = self._resume_state
        if resume and resume.get("run_dir") and (Path(resume["run_dir"]) / "manifest.json").exists():
            self._run = self._reopen_run(resume)
        else:
            self._run = self._open_run()

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "probe": probe_fingerprint(self._images, self._labels),
            "target_layer": self._layer.name,
            "num_classes": self._layer.num_classes,
            "num_prototypes": self.num_prototypes,
        }

    def _reopen_run(self, resume: dict[str, Any]) -> I2XRun:
        run = I2XRun.load(resume["run_dir"])
        ours = self._fingerprint()
        differs = [k for k in ours if run.fingerprint.get(k) != ours[k]]
        if differs:
            raise ValueError(
                f"cannot resume the I2X run in {run.path}: its {', '.join(differs)} differ from this callback's "
                "(a run needs the same probe set, target layer, class count and K throughout); "
                "pass a new run_dir to start a new run"
            )
        prototypes = None
        if "prototypes" in resume:
            arrays = {k: v.numpy() for k, v in resume["prototypes"].items()}
            prototypes = (Prototypes.from_arrays(arrays), resume["assignment"].numpy(), int(resume["reference"]))
        run.truncate(int(resume["num_checkpoints"]), prototypes)
        return run

    def _open_run(self) -> I2XRun:
        path = self._run_path
        images = self._images.numpy()
        store = self.store_probe_images and images.size * 2 <= _MAX_STORED_PROBE_BYTES
        _, h, w = self._layer.feature_shape
        config = {
            "target_layer": self._layer.name,
            "cam": self.cam,
            "cam_target": self.cam_target,
            "every_n_epochs": self.every_n_epochs,
            "pca_components": self.pca_components,
            "kmeans_iters": self.kmeans_iters,
            "seed": self.seed,
            "normalise_maps": self.normalise_maps,
            "explain_kwargs": self.explain_kwargs,
        }
        return I2XRun.create(
            path,
            labels=self._labels.numpy(),
            class_names=self._class_names,
            feature_shape=(h, w),
            num_prototypes=self.num_prototypes,
            config=config,
            fingerprint=self._fingerprint(),
            images=images if store else None,
        )

    # -- recording ----------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer):
            return
        with preserved_rng():
            if trainer.is_global_zero:
                self._guarded("open run", trainer, self._ensure_run, trainer)
            evidence = self._probe_pass(trainer, pl_module)
            if trainer.is_global_zero and evidence is not None:
                self._guarded("record", trainer, self._record, trainer, *evidence)

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _probe_pass(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[torch.Tensor, ...] | None:
        """(activations, cams, confidences) of the whole probe set in probe order, on rank 0;
        None elsewhere or when the pass failed on any rank. With several processes each rank
        runs its contiguous share and every rank joins the gather, failed or not, so none is
        left waiting in a collective."""
        world = trainer.world_size
        n = self._images.shape[0]
        share = -(-n // world)
        lo, hi = min(trainer.global_rank * share, n), min((trainer.global_rank + 1) * share, n)
        local = self._guarded("probe pass", trainer, self._probe_shard, pl_module, lo, hi)
        if world == 1:
            return local
        d, h, w = self._layer.feature_shape
        shapes = ((share, d, h, w), (share, h, w), (share, self._layer.num_classes))
        ok = torch.tensor([local is not None], dtype=torch.float32, device=pl_module.device)
        padded = [torch.zeros(shape, dtype=torch.float32, device=pl_module.device) for shape in shapes]
        if local is not None:
            for buffer, part in zip(padded, local):
                buffer[: hi - lo] = part
        gathered = [trainer.strategy.all_gather(t) for t in (ok, *padded)]
        if not trainer.is_global_zero:
            return None
        failed = (gathered[0].reshape(-1) == 0).nonzero().reshape(-1).tolist()
        if failed:
            if local is not None:  # rank 0's own failure is already recorded
                self._guarded("probe pass", trainer, _raise, RuntimeError(f"the probe pass failed on rank(s) {failed}"))
            return None
        return tuple(t.reshape(world * share, *t.shape[2:])[:n] for t in gathered[1:])

    def _probe_shard(self, pl_module: pl.LightningModule, lo: int, hi: int) -> tuple[torch.Tensor, ...]:
        """Activations (n, d, h, w), maps (n, h, w) and confidences (n, M) of probe[lo:hi], float32."""
        d, h, w = self._layer.feature_shape
        parts: tuple[list, list, list] = ([], [], [])
        for batch in probe_batches(
            pl_module, self._layer.module, self._images[lo:hi], self._labels[lo:hi],
            cam=self.cam, cam_target=self.cam_target, batch_size=self.probe_batch_size,
            reshape_transform=self.reshape_transform, forward_fn=self.forward_fn, normalise=self.normalise_maps,
        ):
            for out, t in zip(parts, (batch.activations, batch.cams, batch.confidences)):
                out.append(t.float())
        if hi == lo:
            device = pl_module.device
            return (torch.zeros((0, d, h, w), device=device), torch.zeros((0, h, w), device=device),
                    torch.zeros((0, self._layer.num_classes), device=device))
        return tuple(torch.cat(p) for p in parts)

    def _record(self, trainer: pl.Trainer, activations: torch.Tensor, cams: torch.Tensor, confidences: torch.Tensor) -> None:
        """Rank 0: write the checkpoint, refit the prototypes, then explain and log."""
        self._ensure_run(trainer)
        run = self._run
        conf_np = confidences.cpu().numpy()
        index = run.append_checkpoint(cams.cpu().numpy(), conf_np, epoch=trainer.current_epoch, global_step=trainer.global_step)
        feats = activations.permute(0, 2, 3, 1).reshape(-1, activations.shape[1]).cpu().numpy()
        previous = None if run.prototypes is None else run.assignment().reshape(-1)
        protos, assignment, distances = fit_prototypes(
            feats, self.num_prototypes, n_components=self.pca_components, niter=self.kmeans_iters,
            seed=self.seed, previous_assignment=previous, return_distances=True,
        )
        run.set_prototypes(protos, assignment, reference=index, distances=distances)
        self._guarded("explain", trainer, self._explain_and_log, trainer, conf_np)

    def _explain_and_log(self, trainer: pl.Trainer, _confidences: np.ndarray) -> None:
        """Refresh the explanation, then write the TensorBoard views (``lightning_i2x.views``);
        a view failure is guarded on its own so it never costs the explanation."""
        self.explanation = self._run.explain(**self.explain_kwargs)
        writer = _tensorboard_writer(trainer)
        if writer is None:
            return
        self._guarded("views", trainer, log_summary, writer, self._run, self.explanation, trainer.global_step, self.view_options)
        if not self.view_options.figures:
            return
        budget, end = self.view_time_budget, self._views_end
        if budget is None or end is None or self._views_cost <= budget * (time.perf_counter() - end):
            self._draw_figures(trainer, writer)
        else:
            self._views_pending = True

    def _draw_figures(self, trainer: pl.Trainer, writer: Any) -> None:
        start = time.perf_counter()
        self._guarded("views", trainer, log_figures, writer, self._run, self.explanation, trainer.global_step, self.view_options)
        self._views_end = time.perf_counter()
        self._views_cost, self._views_pending = self._views_end - start, False

    # -- Step 7 at the end of fit ----------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = _tensorboard_writer(trainer)
        if self._views_pending and writer is not None and trainer.is_global_zero:
            with preserved_rng():
                self._draw_figures(trainer, writer)
        if self.auto_finetune and trainer.is_global_zero and self._run is not None:
            self._guarded("finetune", trainer, self._finetune, trainer, pl_module)

    def _finetune(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fine-tune the trained module in place on the curated set, log and store the result."""
        kwargs = dict(self.finetune_kwargs)
        kwargs.setdefault("forward_fn", self.forward_fn)
        kwargs.setdefault("reshape_transform", self.reshape_transform)
        kwargs.setdefault("device", trainer.strategy.root_device)
        kwargs.setdefault("progress", trainer.progress_bar_callback is not None)
        kwargs.setdefault("trainer_kwargs", {"precision": trainer.precision})
        finetuner = PerturbationFinetuner(self._run, **kwargs)
        result = finetuner.fit(pl_module, train_dataloaders=trainer.train_dataloader, val_dataloaders=trainer.val_dataloaders)
        self.finetune_result = result
        writer = _tensorboard_writer(trainer)
        if writer is not None:
            log_finetune(writer, result, trainer.global_step)
            writer.flush()

    def _guarded(self, where: str, trainer: pl.Trainer, fn: Callable, *args) -> Any:
        """Run explainer work and return its result; with on_error='warn' a failure is warned
        once, recorded, and gives None."""
        try:
            return fn(*args)
        except Exception as e:
            if self.on_error == "raise":
                raise
            key = (where, type(e).__name__)
            if key not in self._warned:
                self._warned.add(key)
                rank = f" on rank {trainer.global_rank}" if trainer.world_size > 1 else ""
                warnings.warn(
                    f"I2XCallback: {where} failed{rank} at epoch {trainer.current_epoch}, step {trainer.global_step}: "
                    f"{type(e).__name__}: {e}. Training goes on and the run records the failure; "
                    "pass on_error='raise' to stop instead.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if self._run is not None:
                try:
                    self._run.record_error(where, e, epoch=trainer.current_epoch, global_step=trainer.global_step)
                except Exception:
                    pass  # the run directory itself may be what failed


def _raise(error: Exception) -> None:
    raise error


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe_file = path / f".write-test-{os.getpid()}"
        probe_file.write_bytes(b"")
        probe_file.unlink()
    except OSError as e:
        raise ValueError(f"run_dir {str(path)!r} cannot be written ({e.strerror or e}); pass a writable run_dir") from None


def _tensorboard_writer(trainer: pl.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
