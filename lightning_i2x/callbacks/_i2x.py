"""``I2XCallback``: the Lightning glue around the record pipeline (``lightning_i2x.record``).

What is Lightning's stays here: when to record, the DDP split and gather of the probe pass, the
background worker, failure isolation, state for resume, and handing the views to the trainer's
loggers. The checks, opening the run and each record's analysis are the pipeline's.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from .. import record
from .._core import check_bool, check_choice, check_int
from .._model import ForwardFn, default_forward, preserved_rng
from ..analysis import Explanation
from ..finetune import FinetuneResult, finetune_after_fit
from ..measures import Measure, check_measures
from ..options import ExplainOptions, FinetuneOptions, ProbePassOptions, PrototypeOptions, RunConfig, ViewOptions, check_groups
from ..record import AnalysisWorker, ProbeEvidence, Recorder
from ..saliency import TargetLayer, check_saliency_use, resolve_target_layer
from ..store import I2XRun
from ..viz import DeferredSink, DrawBudget, LogSink, log_figures, log_finetune, log_summary
from ._isolation import At, Isolation
from ._strategy import check_strategy

__all__ = ["I2XCallback"]


class I2XCallback(pl.Callback):
    """Record I2X evidence at validation epoch ends and keep the structured explanation current.

    Args:
        probe: the fixed probe set: a Dataset, a DataLoader or an ``(images, labels)`` pair.
        target_layer: dotted module path (``"layer4"``, ``"features.7"``) or the module itself;
            None picks the last module with a 4-D output of more than one location.
        num_prototypes: K, the number of abstract prototypes.
        every_n_epochs: record at the validation ends of every n-th epoch.
        cam: a saliency method of ``lightning_i2x.saliency.CAM_METHODS``: ``"gradcam"`` (the native
            fast path, the only one that runs under DDP), a pytorch-grad-cam method, ``"igos"``, ``"igos++"``.
        run_dir: where the run is written; default ``<trainer.log_dir>/i2x``.
        probe_pass: ``ProbePassOptions``, how the probe pass runs.
        prototypes: ``PrototypeOptions``, how the prototypes are fitted.
        explain: ``ExplainOptions``, the analysis (Steps 4-6).
        views: ``ViewOptions`` for what is drawn, True for the defaults, False for scalars and text
            only. Scalars go to every logger of the trainer, text and images to those that take them.
        auto_finetune: at the end of fit (one process only), run Step 7 with ``finetune`` (default
            ``FinetuneOptions()``): the trained module is fine-tuned **in place** with the
            trainer's dataloaders; results go to the loggers, ``<run>/finetune/`` and ``finetune_result``.
        finetune: ``FinetuneOptions`` for ``auto_finetune``.
        class_names: names of the M classes; default the probe dataset's ``classes`` or indices.
        reshape_transform: maps a token-sequence output to (N, C, H, W), as in pytorch-grad-cam.
        forward_fn: ``forward_fn(model, images) -> scores`` for models whose ``forward`` needs more.
        on_error: ``"warn"``: an explainer failure is warned about once, recorded in the run, and
            training goes on; ``"raise"``: it stops training.
        measures: further measures that need the model (``lightning_i2x.measures``), run on rank 0
            after every record or once at the end of fit; their scalars go to the loggers as
            ``i2x/<metric>`` and into the run, larger results into the run's attachments.
        async_analysis: run each record's analysis (prototype refit, explanation, views, writes) in
            one background worker, in order, so the training thread pays for little more than the
            probe pass; joined before a checkpoint is saved, at the end of fit and at teardown. The
            run is the same either way. Measures that run at every record make the record wait.

    Raises:
        ValueError / TypeError: at construction for a bad argument, at ``setup`` for a probe,
            layer, class list or run directory that does not fit the model (before any training).
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
    ):
        super().__init__()
        views = ViewOptions(figures=views) if isinstance(views, bool) else views
        check_groups("I2XCallback", probe_pass=(probe_pass, ProbePassOptions, False), prototypes=(prototypes, PrototypeOptions, False),
                     explain=(explain, ExplainOptions, False), views=(views, ViewOptions, False), finetune=(finetune, FinetuneOptions, True))
        check_saliency_use(cam, normalise=probe_pass.normalise_maps, forward_fn=forward_fn)
        check_choice(self, "on_error", on_error, ("warn", "raise"))
        check_int(self, "num_prototypes", num_prototypes)
        check_int(self, "every_n_epochs", every_n_epochs)
        check_bool(self, "auto_finetune", auto_finetune)
        check_bool(self, "async_analysis", async_analysis)
        if finetune is not None and not auto_finetune:
            raise ValueError("I2XCallback.finetune was given without auto_finetune=True; set auto_finetune=True to run it")
        self.probe, self.target_layer, self.num_prototypes, self.every_n_epochs = probe, target_layer, num_prototypes, every_n_epochs
        self.cam, self.run_dir = cam, None if run_dir is None else Path(run_dir)
        self.probe_pass, self.prototypes, self.explain, self.views = probe_pass, prototypes, explain, views
        self.auto_finetune = auto_finetune
        self.finetune = finetune if finetune is not None else FinetuneOptions() if auto_finetune else None
        self.class_names, self.reshape_transform, self.forward_fn, self.on_error = class_names, reshape_transform, forward_fn, on_error
        self.measures = tuple(m.with_views(views) if hasattr(m, "with_views") else m for m in check_measures(measures))
        self.async_analysis = async_analysis
        self.explanation: Explanation | None = None
        self.finetune_result: FinetuneResult | None = None
        self._recorder = Recorder(num_prototypes, prototypes, explain)
        self._budget = DrawBudget(views.time_budget)
        self._worker: AnalysisWorker | None = None
        self._pending: list[DeferredSink] = []  # the background records' sinks, replayed on the training thread
        self._run: I2XRun | None = None
        self._layer: TargetLayer | None = None
        self._images = self._labels = self._dataset_names = None
        self._names: list[str] = []
        self._isolation = Isolation(on_error, self)
        self._resume_state: dict[str, Any] | None = None
        self._run_path: Path | None = None

    # -- public state -------------------------------------------------------------------------------
    @property
    def run(self) -> I2XRun | None:
        """The live ``I2XRun`` (None before the first record and on ranks other than 0)."""
        return self._run

    @property
    def state_key(self) -> str:
        return self._generate_state_key(run_dir=str(self.run_dir), target_layer=str(self.target_layer))

    def state_dict(self) -> dict[str, Any]:
        """The run's resume state (``record.run_state``), after the analysis in flight (Lightning asks
        for it before ``on_save_checkpoint``)."""
        if self._worker is not None:
            self._worker.join()
        return record.run_state(self._run)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = dict(state_dict)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (for spawn strategies): a copy reopens its run from the state dict or anew."""
        return {**self.__dict__, "_run": None, "_layer": None, "_worker": None, "_pending": []}

    # -- setup: every check before the first training step -------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_strategy(trainer.strategy)
        if self._images is None:
            self._images, self._labels, self._dataset_names = record.materialise_probe(self.probe)
        self._layer = resolve_target_layer(pl_module, self.target_layer, self._images[:2], forward_fn=self.forward_fn or default_forward,
                                           reshape_transform=self.reshape_transform)
        self._names = record.check_fit(self._labels, self._layer, num_prototypes=self.num_prototypes, cam=self.cam, views=self.views,
                                class_names=self.class_names or self._dataset_names, world_size=trainer.world_size,
                                finetune=self.finetune if self.auto_finetune else None)
        self._recorder.bind(pl_module, self._layer, self._images, self._labels, self.forward_fn)
        if trainer.is_global_zero and self._run is None:
            self._run_path = record.check_writable(self.run_dir or Path(trainer.log_dir or trainer.default_root_dir) / "i2x")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_run(trainer)

    def _ensure_run(self, trainer: pl.Trainer) -> None:
        """Open the run once Lightning has restored this callback's state (after ``setup``)."""
        if trainer.is_global_zero and self._run is None:
            config = RunConfig(self._layer.name, self.cam, self.every_n_epochs, self.probe_pass, self.prototypes, self.explain)
            self._run = record.open_or_resume(self._run_path, self._resume_state, self._images, self._labels, self._names, self._layer,
                                       num_prototypes=self.num_prototypes, config=config, store_images=self.probe_pass.store_images)

    # -- recording ----------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs):
            return
        with preserved_rng():
            if trainer.is_global_zero:
                self._guarded("open run", trainer, self._ensure_run, trainer)
            evidence = self._gathered_probe_pass(trainer, pl_module)
            if trainer.is_global_zero and evidence is not None and self._run is not None:
                self._guarded("record", trainer, self._record, trainer, pl_module, evidence)

    def _gathered_probe_pass(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ProbeEvidence | None:
        """The whole probe's evidence on rank 0 (None elsewhere or when a rank failed): streamed alone, ``record.distributed_probe_pass`` under DDP."""
        stream = self._recorder.start_pass(streaming=trainer.world_size == 1)  # the channel source's head is read as it is now
        guard = lambda where, fn, *a, **kw: self._guarded(where, trainer, fn, *a, **kw)  # noqa: E731
        run_pass = lambda images, labels, stream: record.probe_pass(pl_module, self._layer.module, images, labels, cam=self.cam, options=self.probe_pass, reshape_transform=self._layer.reshape_transform, forward_fn=self.forward_fn, stream=stream)  # noqa: E731
        if trainer.world_size == 1:
            return guard("probe pass", run_pass, self._images, self._labels, stream=stream)
        group = record.Group(trainer.global_rank, trainer.world_size, trainer.strategy.all_gather, lambda t: trainer.strategy.broadcast(t, src=0), pl_module.device)
        previous = lambda: self._join(trainer) or (None if self._run is None or self._run.prototypes is None else self._run.assignment())  # noqa: E731
        return record.distributed_probe_pass(group, run_pass, guard, self._images, self._labels, self._recorder, self._layer,
                                             batch_size=self.probe_pass.batch_size, previous=previous)

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, evidence: ProbeEvidence) -> None:
        """Hand the evidence to the analysis: in the background worker when ``async_analysis`` (the
        training thread keeps only the probe pass and a host copy of its results), else here."""
        self._report_worker_failures(trainer)
        at, sink = At.of(trainer), LogSink(trainer.loggers)
        if self.async_analysis and not any(m.when == "record" for m in self.measures):
            evidence = evidence.on_host(self._images, self._labels)
            if self._worker is None:
                self._worker = AnalysisWorker()
            self._pending.append(DeferredSink(sink, at))  # its logger calls are replayed here, on the training thread
            self._worker.submit("record", self._analyse, evidence, at, self._pending[-1], None, [])
        else:
            self._analyse(dataclasses.replace(evidence, images=self._images, labels=self._labels), at, sink, pl_module, None)

    def _analyse(self, evidence: ProbeEvidence, at: At, sink: LogSink, pl_module: pl.LightningModule | None, failures: list | None) -> list:
        """One record's analysis and views, each step isolated. ``failures`` None: report each failure
        at once (it may raise); a list (the worker): collect them for the training thread."""
        attempt = self._isolation.collecting(at, failures)
        explanation = record.analyse_record(self._recorder, self._run, evidence, epoch=at.epoch, global_step=at.step, attempt=attempt,
                                     model=pl_module, measures=self.measures, forward_fn=self.forward_fn)
        if explanation is not None:
            self.explanation = explanation
            if sink:
                attempt("views", self._log_summary, sink, at.step)
                sink.group()
                if self.views.figures and sink.takes_images and self._budget.allows(time.perf_counter()):
                    attempt("views", self._draw, sink, at.step)
                    sink.group()
        return failures or []

    def _log_summary(self, sink: LogSink, step: int) -> None:
        log_summary(sink, self._run, self.explanation, step, self.views)
        sink.scalars({f"i2x/{k}": float(v[-1]) for k, v in self._run.metrics().items() if np.isfinite(v[-1])}, step)

    def _draw(self, sink: LogSink, step: int) -> None:
        with self._budget.drawing():
            log_figures(sink, self._run, self.explanation, step, self.views)

    def _join(self, trainer: pl.Trainer) -> None:
        """Wait for the analysis in flight and report what failed there."""
        if self._worker is not None:
            self._worker.join()
            self._report_worker_failures(trainer)
            self._pending.clear()  # the worker is idle: every call was replayed

    def _report_worker_failures(self, trainer: pl.Trainer) -> None:
        if self._worker is not None:
            self._isolation.report_worker(self._worker, At.of(trainer))
        for sink in self._pending:
            sink.replay(lambda e, at=sink.at: self._isolation.report("views", e, at))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._join(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._report_worker_failures(trainer)  # and the background record's logger calls, soon after it made them

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":  # validate(): nothing trains meanwhile, so the record completes here
            self._join(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._worker is not None:
            self._join(trainer)
            self._worker.close()
            self._worker = None

    # -- the end of fit -----------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._join(trainer)
        sink, at = LogSink(trainer.loggers), At.of(trainer)
        if self._run is not None and self.explanation is not None:
            with preserved_rng():
                final = record.finish_fit(self._recorder, self._run, self.explanation, model=pl_module, measures=self.measures,
                                   attempt=self._isolation.collecting(at, None), forward_fn=self.forward_fn)
            if final is not None:
                self.explanation = final
                if sink:
                    self._guarded("views", trainer, self._log_summary, sink, trainer.global_step)
                self._budget.pending = True  # draw the views again: they show what the measures found
            if self._budget.pending and sink.takes_images and self.views.figures:
                with preserved_rng():
                    self._guarded("views", trainer, self._draw, sink, trainer.global_step)
        if self.auto_finetune and self._run is not None:
            self.finetune_result = self._guarded("finetune", trainer, finetune_after_fit, trainer, pl_module, self._run, self.explanation,
                                                 self.finetune, self.forward_fn, self._layer.reshape_transform)
            if self.finetune_result is not None and sink:
                self._guarded("views", trainer, log_finetune, sink, self.finetune_result, trainer.global_step)
                sink.flush()

    def _guarded(self, where: str, trainer: pl.Trainer, fn: Callable, *args, **kw) -> Any:
        return self._isolation.guarded(where, At.of(trainer), fn, *args, **kw)
