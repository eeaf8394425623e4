"""``I2XCallback``: the Lightning glue around the record pipeline (``lightning_i2x.record``).

What is Lightning's stays here: the checks at ``setup`` (before any training step), when to record,
the DDP split and gather of the probe pass, failure isolation, state for resume, and handing the
views to the trainer's loggers. Everything else is a plain function or class elsewhere.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch

from .._model import ForwardFn, preserved_rng
from ..analysis import Explanation, resolve_pairs
from ..finetune import FinetuneResult, finetune_after_fit
from ..measures import Measure, check_measures
from ..options import ExplainOptions, FinetuneOptions, ProbePassOptions, PrototypeOptions, RunConfig, ViewOptions
from ..prototypes import Prototypes
from ..record import AnalysisWorker, ProbeEvidence, Recorder, materialise_probe, open_run, probe_pass, resume_run, run_fingerprint
from ..saliency import CAM_METHODS, TargetLayer, resolve_target_layer
from ..store import I2XRun
from ..viz import DrawBudget, LogSink, log_figures, log_finetune, log_summary

__all__ = ["I2XCallback"]


class I2XCallback(pl.Callback):
    """Record I2X evidence at validation epoch ends and keep the structured explanation current.

    Args:
        probe: the fixed probe set: a Dataset, a DataLoader or an ``(images, labels)`` pair.
        target_layer: dotted module path (``"layer4"``, ``"features.7"``) or the module itself;
            None picks the last module with a 4-D output of more than one location.
        num_prototypes: K, the number of abstract prototypes.
        every_n_epochs: record at the validation ends of every n-th epoch.
        cam: ``"gradcam"`` (the native fast path) or a pytorch-grad-cam method name.
        run_dir: where the run is written; default ``<trainer.log_dir>/i2x``.
        probe_pass: ``ProbePassOptions`` (cam_target, batch_size, normalise_maps, store_images).
        prototypes: ``PrototypeOptions`` (pca_components, kmeans_iters, seed).
        explain: ``ExplainOptions`` (ridge_lambda, tau, min_flips, shared_frac, saliency_threshold, ...).
        views: ``ViewOptions`` for what is drawn, True for the defaults, False for scalars and text
            only. Scalars go to every logger of the trainer, text and images to those that take
            them (``lightning_i2x.sinks``).
        auto_finetune: at the end of fit (rank 0), run Step 7 with ``finetune`` (default
            ``FinetuneOptions()``): ``PerturbationFinetuner`` fine-tunes the trained module **in
            place** with the trainer's dataloaders; results go to the loggers (``i2x/finetune/...``),
            ``<run>/finetune/`` and ``finetune_result``. Single-process fits only.
        finetune: ``FinetuneOptions`` for ``auto_finetune``.
        class_names: names of the M classes; default the probe dataset's ``classes`` or indices.
        reshape_transform: maps a token-sequence output to (N, C, H, W), as in pytorch-grad-cam.
        forward_fn: ``forward_fn(model, images) -> scores`` for models whose ``forward`` needs more.
        on_error: ``"warn"``: an explainer failure is warned about once, recorded in the run, and
            training goes on; ``"raise"``: it stops training.
        measures: further measures that need the model (``lightning_i2x.measures``): run on rank
            0 after every record or once at the end of fit; their scalars go to the loggers as
            ``i2x/<metric>`` and into the run, larger results into the run's attachments.
        async_analysis: run the analysis of each record (prototype refit, explanation, views,
            writes) in one background worker, in order, so the training thread pays for little
            more than the probe pass; joined before a checkpoint is saved, at the end of fit and at
            teardown, its failures reported at the next hook. The run and the explanation are the
            same either way. False: everything on the training thread (0.1's behaviour). Measures
            that run at every record make the record wait for its analysis.

    Raises:
        ValueError / TypeError: at construction for a bad argument, at ``setup`` for a probe,
            layer, class list or run directory that does not fit the model (before any training).

    The 0.1 keyword names (``cam_target``, ``explain_kwargs``, ``log_views``, ``view_dpi``, ...)
    still work for this release, with a ``FutureWarning`` naming their replacement.
    """

    def __init__(
        self,
        probe: Any,
        target_layer: str | torch.nn.Module | None = None,
        num_prototypes: int = 32,
        *,
        every_n_epochs: int = 1,
        cam: str = "gradcam",
        run_dir: str | os.PathLike | None = None,
        probe_pass: ProbePassOptions = ProbePassOptions(),
        prototypes: PrototypeOptions = PrototypeOptions(),
        explain: ExplainOptions = ExplainOptions(),
        views: ViewOptions | bool = True,
        auto_finetune: bool = False,
        finetune: FinetuneOptions | None = None,
        class_names: list[str] | None = None,
        reshape_transform: Callable | None = None,
        forward_fn: ForwardFn | None = None,
        on_error: str = "warn",
        measures: Sequence[Measure] = (),
        async_analysis: bool = True,
        **deprecated: Any,
    ):
        super().__init__()
        if deprecated:
            probe_pass, prototypes, explain, views, finetune = _translate_deprecated(
                deprecated, probe_pass, prototypes, explain, views, finetune, auto_finetune)
        if isinstance(views, bool):
            views = ViewOptions(figures=views)
        for name, value, kind in (("probe_pass", probe_pass, ProbePassOptions), ("prototypes", prototypes, PrototypeOptions),
                                  ("explain", explain, ExplainOptions), ("views", views, ViewOptions)):
            if not isinstance(value, kind):
                raise TypeError(f"I2XCallback.{name} must be a lightning_i2x.{kind.__name__}, got {type(value).__name__}")
        if finetune is not None and not isinstance(finetune, FinetuneOptions):
            raise TypeError(f"I2XCallback.finetune must be a lightning_i2x.FinetuneOptions or None, got {type(finetune).__name__}")
        if cam not in CAM_METHODS:
            raise ValueError(f"I2XCallback.cam must be one of {sorted(CAM_METHODS)}, got {cam!r}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"I2XCallback.on_error must be one of ('warn', 'raise'), got {on_error!r}")
        for name, value in (("num_prototypes", num_prototypes), ("every_n_epochs", every_n_epochs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"I2XCallback.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(auto_finetune, bool):
            raise ValueError(f"I2XCallback.auto_finetune must be True or False, got {auto_finetune!r}")
        if finetune is not None and not auto_finetune:
            raise ValueError("I2XCallback.finetune was given without auto_finetune=True; set auto_finetune=True to run it")
        if not probe_pass.normalise_maps and cam != "gradcam":
            raise ValueError("ProbePassOptions.normalise_maps=False needs cam='gradcam' (pytorch-grad-cam always normalises)")
        if forward_fn is not None and cam != "gradcam":
            raise ValueError("I2XCallback.forward_fn needs cam='gradcam' (pytorch-grad-cam calls model(images))")
        self.probe = probe
        self.target_layer = target_layer
        self.num_prototypes = num_prototypes
        self.every_n_epochs = every_n_epochs
        self.cam = cam
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.probe_pass = probe_pass
        self.prototypes = prototypes
        self.explain = explain
        self.views = views
        self.auto_finetune = auto_finetune
        self.finetune = finetune if finetune is not None else FinetuneOptions() if auto_finetune else None
        self.class_names = class_names
        self.reshape_transform = reshape_transform
        self.forward_fn = forward_fn
        self.on_error = on_error
        self.measures = check_measures(measures)
        if not isinstance(async_analysis, bool):
            raise ValueError(f"I2XCallback.async_analysis must be True or False, got {async_analysis!r}")
        self.async_analysis = async_analysis
        self._worker: AnalysisWorker | None = None
        self.explanation: Explanation | None = None
        self.finetune_result: FinetuneResult | None = None
        self._recorder = Recorder(num_prototypes, prototypes, explain)
        self._budget = DrawBudget(views.time_budget)
        self._run: I2XRun | None = None
        self._layer: TargetLayer | None = None
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._names: list[str] = []
        self._warned: set[tuple[str, str]] = set()
        self._resume_state: dict[str, Any] | None = None
        self._run_path: Path | None = None

    # -- public state ---------------------------------------------------------------------------
    @property
    def run(self) -> I2XRun | None:
        """The live ``I2XRun`` (None before the first record and on ranks other than 0)."""
        return self._run

    @property
    def state_key(self) -> str:
        return self._generate_state_key(run_dir=str(self.run_dir), target_layer=str(self.target_layer))

    def state_dict(self) -> dict[str, Any]:
        """What a resumed fit needs to continue the same run: where it is, how many records the
        Lightning checkpoint covers, and the prototypes current at that moment. The analysis in
        flight is waited for first, so the state is consistent (Lightning asks for it before
        ``on_save_checkpoint``)."""
        if self._worker is not None:
            self._worker.join()
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

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (as Lightning needs for spawn strategies): the live run and layer are not
        carried; a copy reopens its run from the state dict or starts anew at ``setup``."""
        state = self.__dict__.copy()
        state.update(_run=None, _layer=None, _worker=None)
        return state

    # -- setup: every check before the first training step -------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._images is None:
            self._images, self._labels, dataset_names = materialise_probe(self.probe)
            self._dataset_names = dataset_names
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
        names = self.class_names or self._dataset_names or [str(c) for c in range(m)]
        if len(names) != m:
            raise ValueError(f"{len(names)} class names for a model with {m} classes")
        self._names = [str(c) for c in names]
        unknown = [c for c in self.views.classes or ()
                   if (c not in self._names if isinstance(c, str) else not 0 <= c < m)]
        if unknown:
            raise ValueError(f"ViewOptions.classes {unknown} are not classes of this model; its classes are {self._names} (or indices 0..{m - 1})")
        if trainer.world_size > 1 and self.cam != "gradcam":
            raise ValueError(
                f"cam={self.cam!r} cannot run in {trainer.world_size} processes: only cam='gradcam' runs under DDP "
                "(pytorch-grad-cam and I-GOS backpropagate into every parameter, which DDP would reduce across "
                "ranks; the native path stops at the target layer)"
            )
        if self.auto_finetune:
            if trainer.world_size > 1:
                raise ValueError(
                    f"auto_finetune runs at the end of fit in one process; this fit runs in {trainer.world_size}: "
                    "fine-tune afterwards with lightning_i2x.PerturbationFinetuner on one device"
                )
            if self.finetune.pairs is not None:
                resolve_pairs(self.finetune.pairs, self._names)
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
            prototypes = None
            if "prototypes" in resume:
                arrays = {k: v.numpy() for k, v in resume["prototypes"].items()}
                prototypes = (Prototypes.from_arrays(arrays), resume["assignment"].numpy(), int(resume["reference"]))
            self._run = resume_run(resume["run_dir"], run_fingerprint(self._images, self._labels, self._layer, self.num_prototypes),
                                   int(resume["num_checkpoints"]), prototypes)
        else:
            config = RunConfig(self._layer.name, self.cam, self.every_n_epochs, self.probe_pass, self.prototypes, self.explain)
            self._run = open_run(self._run_path, self._images, self._labels, self._names, self._layer,
                                 num_prototypes=self.num_prototypes, config=config, store_images=self.probe_pass.store_images)

    # -- recording ----------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._due(trainer):
            return
        with preserved_rng():
            if trainer.is_global_zero:
                self._guarded("open run", trainer, self._ensure_run, trainer)
            evidence = self._gathered_probe_pass(trainer, pl_module)
            if trainer.is_global_zero and evidence is not None:
                self._guarded("record", trainer, self._record, trainer, pl_module, evidence)

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _gathered_probe_pass(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ProbeEvidence | None:
        """The whole probe's evidence in probe order on rank 0; None elsewhere or when the pass
        failed on any rank. With several processes each rank runs its contiguous share and every
        rank joins the gather, failed or not, so none is left waiting in a collective."""
        world = trainer.world_size
        n = self._images.shape[0]
        share = -(-n // world)
        lo, hi = min(trainer.global_rank * share, n), min((trainer.global_rank + 1) * share, n)
        local = self._guarded("probe pass", trainer, self._probe_share, pl_module, lo, hi, world == 1)
        if world == 1:
            return local
        d, h, w = self._layer.feature_shape
        shapes = ((share, d, h, w), (share, h, w), (share, self._layer.num_classes))
        ok = torch.tensor([local is not None], dtype=torch.float32, device=pl_module.device)
        padded = [torch.zeros(shape, dtype=torch.float32, device=pl_module.device) for shape in shapes]
        if local is not None:
            for buffer, part in zip(padded, (local.activations, local.cams, local.confidences)):
                buffer[: hi - lo] = part
        gathered = [trainer.strategy.all_gather(t) for t in (ok, *padded)]
        if not trainer.is_global_zero:
            return None
        failed = (gathered[0].reshape(-1) == 0).nonzero().reshape(-1).tolist()
        if failed:
            if local is not None:  # rank 0's own failure is already recorded
                self._guarded("probe pass", trainer, _raise, RuntimeError(f"the probe pass failed on rank(s) {failed}"))
            return None
        return ProbeEvidence(*(t.reshape(world * share, *t.shape[2:])[:n] for t in gathered[1:]))

    def _probe_share(self, pl_module: pl.LightningModule, lo: int, hi: int, stream: bool) -> ProbeEvidence:
        """probe[lo:hi]'s evidence; alone (one process) its features go straight into a prototype
        stream, under DDP they are kept whole for the gather."""
        if hi == lo:
            return ProbeEvidence.empty(self._layer.feature_shape, self._layer.num_classes, pl_module.device)
        return probe_pass(pl_module, self._layer.module, self._images[lo:hi], self._labels[lo:hi], cam=self.cam,
                          options=self.probe_pass, reshape_transform=self._layer.reshape_transform, forward_fn=self.forward_fn,
                          stream=self._recorder.new_stream() if stream else None)

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, evidence: ProbeEvidence) -> None:
        """Rank 0: hand the evidence to the analysis (append, refit, explain, measure, log), in the
        background worker when ``async_analysis`` (the training thread keeps only the probe pass and
        the copy of its results), else here."""
        self._ensure_run(trainer)
        self._report_worker_failures(trainer)
        evidence.images, evidence.labels = self._images, self._labels
        at = _At(trainer.current_epoch, trainer.global_step, f" on rank {trainer.global_rank}" if trainer.world_size > 1 else "")
        sink = LogSink(trainer.loggers)
        if self.async_analysis and not any(m.when == "record" for m in self.measures):
            copy = lambda t: None if t is None else t.detach().to("cpu", copy=True)  # noqa: E731
            host = ProbeEvidence(copy(evidence.activations), copy(evidence.cams), copy(evidence.confidences), evidence.stream,
                                 self._images, self._labels)
            self._get_worker().submit("record", self._analyse, host, at, sink, None, [])
        else:
            self._analyse(evidence, at, sink, pl_module, None)

    def _analyse(self, evidence: ProbeEvidence, at: "_At", sink: LogSink, pl_module: pl.LightningModule | None,
                 failures: list | None) -> list:
        """The analysis of one record; each step isolated so a failure never costs the steps before
        it. ``failures`` None: report each failure at once (it may raise); a list: collect them."""

        def attempt(where: str, fn: Callable, *args, **kw) -> Any:
            try:
                return fn(*args, **kw)
            except Exception as e:
                if failures is None:
                    self._report(where, e, at)
                else:
                    failures.append((where, e, at))
                return None

        ok = attempt("record", lambda: self._recorder.append(self._run, evidence, epoch=at.epoch, global_step=at.step) is not None)
        if not ok:
            return failures or []
        explanation = attempt("explain", self._recorder.explain_run, self._run)
        if explanation is None:
            return failures or []
        self.explanation = explanation
        if pl_module is not None:
            for m in self.measures:
                if m.when == "record":
                    attempt(f"measure {m.name}", m, pl_module, self._run, evidence, explanation, forward_fn=self.forward_fn)
        if sink:
            attempt("views", self._log_summary, sink, at.step)
            if self.views.figures and sink.takes_images and self._budget.allows(time.perf_counter()):
                start = time.perf_counter()
                attempt("views", log_figures, sink, self._run, explanation, at.step, self.views)
                self._budget.spent(start, time.perf_counter())
        return failures or []

    def _get_worker(self) -> AnalysisWorker:
        if self._worker is None:
            self._worker = AnalysisWorker()
        return self._worker

    def _join(self, trainer: pl.Trainer | None = None) -> None:
        """Wait for the analysis in flight (before a checkpoint is saved, at the end of fit, at
        teardown) and report what failed there."""
        if self._worker is not None:
            self._worker.join()
            if trainer is not None:
                self._report_worker_failures(trainer)

    def _report_worker_failures(self, trainer: pl.Trainer) -> None:
        if self._worker is None:
            return
        now = _At(trainer.current_epoch, trainer.global_step, "")
        for where, e in self._worker.failures():  # the job itself broke (not expected: _analyse isolates its steps)
            self._report(where, e, now)
        for _, failures in self._worker.results():  # what the analysis isolated, at the record it belongs to
            for where, e, at in failures or []:
                self._report(where, e, at)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._join(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":  # validate(): nothing trains meanwhile, so the record completes here
            self._join(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._worker is not None:
            self._join(trainer)
            self._worker.close()
            self._worker = None

    def _measure(self, when: str, trainer: pl.Trainer, pl_module: pl.LightningModule, evidence: ProbeEvidence | None) -> None:
        for m in self.measures:
            if m.when == when:
                self._guarded(f"measure {m.name}", trainer, m, pl_module, self._run, evidence, self.explanation,
                              forward_fn=self.forward_fn)

    def _log_summary(self, sink: LogSink, step: int) -> None:
        log_summary(sink, self._run, self.explanation, step, self.views)
        measured = {f"i2x/{k}": float(v[-1]) for k, v in self._run.metrics().items() if np.isfinite(v[-1])}
        sink.scalars(measured, step)

    def _draw(self, trainer: pl.Trainer, sink: LogSink) -> None:
        start = time.perf_counter()
        self._guarded("views", trainer, log_figures, sink, self._run, self.explanation, trainer.global_step, self.views)
        self._budget.spent(start, time.perf_counter())

    # -- the end of fit ------------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._join(trainer)
        sink = LogSink(trainer.loggers)
        if self._run is not None and self.explanation is not None and any(m.when == "end" for m in self.measures):
            latest = ProbeEvidence(None, torch.from_numpy(self._run.cams()[-1].copy()),
                                   torch.from_numpy(self._run.latest_confidences().copy()), None, self._images, self._labels)
            with preserved_rng():
                self._measure("end", trainer, pl_module, latest)
            # what the measures stored (a reliance: the suspects) belongs in the final explanation
            self.explanation = self._guarded("explain", trainer, self._recorder.explain_run, self._run) or self.explanation
            if sink:
                self._guarded("views", trainer, self._log_summary, sink, trainer.global_step)
            self._budget.pending = True  # draw the views again: they show what the measures found
        if self._budget.pending and sink.takes_images:
            with preserved_rng():
                self._draw(trainer, sink)
        if self.auto_finetune and self._run is not None:
            self.finetune_result = self._guarded(
                "finetune", trainer, finetune_after_fit, trainer, pl_module, self._run, self.explanation, self.finetune,
                self.forward_fn, self._layer.reshape_transform)
            if self.finetune_result is not None and sink:
                self._guarded("views", trainer, log_finetune, sink, self.finetune_result, trainer.global_step)
                sink.flush()

    def _guarded(self, where: str, trainer: pl.Trainer, fn: Callable, *args, **kw) -> Any:
        """Run explainer work and return its result; with on_error='warn' a failure is warned
        once, recorded, and gives None."""
        try:
            return fn(*args, **kw)
        except Exception as e:
            rank = f" on rank {trainer.global_rank}" if trainer.world_size > 1 else ""
            self._report(where, e, _At(trainer.current_epoch, trainer.global_step, rank))
            return None

    def _report(self, where: str, e: Exception, at: "_At") -> None:
        """on_error='raise': raise it; 'warn': warn once per kind, record it in the run."""
        if self.on_error == "raise":
            raise e
        key = (where, type(e).__name__)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"I2XCallback: {where} failed{at.rank} at epoch {at.epoch}, step {at.step}: "
                f"{type(e).__name__}: {e}. Training goes on and the run records the failure; "
                "pass on_error='raise' to stop instead.",
                RuntimeWarning,
                stacklevel=3,
            )
        if self._run is not None:
            try:
                self._run.record_error(where, e, epoch=at.epoch, global_step=at.step)
            except Exception:
                pass  # the run directory itself may be what failed


class _At(NamedTuple):
    """Where a piece of explainer work belongs: its epoch, step and (under DDP) rank."""

    epoch: int
    step: int
    rank: str


# -- the 0.1 keyword names, for one release ----------------------------------------------------------
_DEPRECATED = {
    "cam_target": ("probe_pass", "cam_target"),
    "probe_batch_size": ("probe_pass", "batch_size"),
    "normalise_maps": ("probe_pass", "normalise_maps"),
    "store_probe_images": ("probe_pass", "store_images"),
    "pca_components": ("prototypes", "pca_components"),
    "kmeans_iters": ("prototypes", "kmeans_iters"),
    "seed": ("prototypes", "seed"),
    "log_views": ("views", "figures"),
    "view_classes": ("views", "classes"),
    "max_view_classes": ("views", "max_classes"),
    "max_view_pairs": ("views", "max_pairs"),
    "overlay_samples": ("views", "overlay_samples"),
    "gallery_patches": ("views", "gallery_patches"),
    "view_dpi": ("views", "dpi"),
    "view_time_budget": ("views", "time_budget"),
}
_GROUPS = {"probe_pass": ProbePassOptions, "prototypes": PrototypeOptions, "views": ViewOptions}


def _translate_deprecated(kw: dict[str, Any], probe_pass, prototypes, explain, views, finetune, auto_finetune):
    """Map 0.1 keyword names onto the option groups, with a FutureWarning naming the new spelling."""
    unknown = sorted(set(kw) - set(_DEPRECATED) - {"explain_kwargs", "finetune_kwargs"})
    if unknown:
        raise TypeError(f"I2XCallback got unexpected keyword argument(s) {unknown}")
    groups: dict[str, dict[str, Any]] = {g: {} for g in _GROUPS}
    for old, value in kw.items():
        if old in _DEPRECATED:
            group, field_name = _DEPRECATED[old]
            groups[group][field_name] = value
            new = f"{group}={_GROUPS[group].__name__}({field_name}=...)"
        elif old == "explain_kwargs":
            new = "explain=ExplainOptions(...)"
        else:
            new = "finetune=FinetuneOptions(...)"
        warnings.warn(f"I2XCallback({old}=...) is deprecated and will be removed in 0.3; use {new}", FutureWarning, stacklevel=3)
    if isinstance(views, bool):
        views = ViewOptions(figures=views)
    probe_pass = ProbePassOptions(**{**probe_pass.to_dict(), **groups["probe_pass"]})
    prototypes = PrototypeOptions(**{**prototypes.to_dict(), **groups["prototypes"]})
    views = ViewOptions(**{**views.to_dict(), **groups["views"]})
    if kw.get("explain_kwargs"):
        explain = ExplainOptions(**{**explain.to_dict(), **dict(kw["explain_kwargs"])})
    if kw.get("finetune_kwargs"):
        if not auto_finetune:
            raise ValueError("I2XCallback.finetune_kwargs was given without auto_finetune=True")
        base = finetune.to_dict() if finetune is not None else {}
        finetune = FinetuneOptions(**{**base, **dict(kw["finetune_kwargs"])})
    return probe_pass, prototypes, explain, views, finetune


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
