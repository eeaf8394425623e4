"""``I2XCallback``: thin Lightning glue around the probe pass, the prototypes and the analysis."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from .cam import CAM_METHODS, ForwardFn, probe_batches
from .explanation import Explanation
from .guards import preserved_rng
from .layers import TargetLayer, resolve_target_layer
from .probe import materialise_probe, probe_fingerprint
from .prototypes import Prototypes, fit_prototypes
from .run import I2XRun

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
        self._guarded("record", trainer, self._record, trainer, pl_module)

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._ensure_run(trainer)
        run = self._run
        with preserved_rng():
            feats, cams, confs = [], [], []
            for batch in probe_batches(
                pl_module, self._layer.module, self._images, self._labels,
                cam=self.cam, cam_target=self.cam_target, batch_size=self.probe_batch_size,
                reshape_transform=self.reshape_transform, forward_fn=self.forward_fn, normalise=self.normalise_maps,
            ):
                feats.append(batch.activations.permute(0, 2, 3, 1).reshape(-1, batch.activations.shape[1]))
                cams.append(batch.cams)
                confs.append(batch.confidences)
            cams_np = torch.cat(cams).cpu().numpy()
            conf_np = torch.cat(confs).cpu().numpy()
            index = run.append_checkpoint(cams_np, conf_np, epoch=trainer.current_epoch, global_step=trainer.global_step)
            feats_np = torch.cat(feats).float().cpu().numpy()
            previous = None if run.prototypes is None else run.assignment().reshape(-1)
            protos, assignment = fit_prototypes(
                feats_np, self.num_prototypes, n_components=self.pca_components, niter=self.kmeans_iters,
                seed=self.seed, previous_assignment=previous,
            )
            run.set_prototypes(protos, assignment, reference=index)
        self._guarded("explain", trainer, self._explain_and_log, trainer, conf_np)

    def _explain_and_log(self, trainer: pl.Trainer, confidences: np.ndarray) -> None:
        self.explanation = self._run.explain(**self.explain_kwargs)
        writer = _tensorboard_writer(trainer)
        if writer is None:
            return
        step = trainer.global_step
        labels = self._labels.numpy()
        writer.add_scalar("i2x/true_class_confidence", float(confidences[np.arange(len(labels)), labels].mean()), step)
        writer.add_scalar("i2x/uncertain_prototypes", len(self.explanation.uncertain), step)
        writer.add_text("i2x/summary", self.explanation.to_markdown(), step)

    def _guarded(self, where: str, trainer: pl.Trainer, fn: Callable, *args) -> None:
        """Run explainer work; with on_error='warn' a failure is warned once and recorded."""
        try:
            fn(*args)
        except Exception as e:
            if self.on_error == "raise":
                raise
            key = (where, type(e).__name__)
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(
                    f"I2XCallback: {where} failed at epoch {trainer.current_epoch}, step {trainer.global_step}: "
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
