"""The explainer never costs the training run: the same logged loss, a model under torch.compile,
and failures of the TensorBoard writer or of the disk isolated from training."""

from __future__ import annotations

import csv
import errno
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

import lightning_i2x._core._atomic as atomic_module
from lightning_i2x import I2XCallback, I2XRun, ViewOptions

from .conftest import TinyCNN, trainer_kwargs


def _fit(root, digits, callbacks, model=None, **kw):
    pl.seed_everything(0, verbose=False)
    model = TinyCNN() if model is None else model
    trainer = pl.Trainer(**trainer_kwargs(root, callbacks=callbacks, **kw))
    train, probe = digits
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    return trainer, model


def _ours(caught) -> list[str]:
    return [str(w.message) for w in caught if "I2XCallback" in str(w.message)]


def test_the_logged_training_loss_is_the_same_with_the_callback(tmp_path, digits):
    losses = []
    for name, cbs in (("without", []), ("with", [I2XCallback(digits[1], num_prototypes=8)])):
        loggers = [TensorBoardLogger(tmp_path / name), CSVLogger(tmp_path / name)]
        _fit(tmp_path / name, digits, cbs, deterministic=True, max_epochs=2, logger=loggers, log_every_n_steps=1)
        with open(loggers[1].log_dir + "/metrics.csv") as f:
            losses.append([(r["step"], r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")])
    assert len(losses[0]) == 2 * 24  # every step of 2 epochs of 1500 / 64 batches
    assert losses[0] == losses[1]  # the same text: bitwise the same float


class _BrokenForI2X:
    """A SummaryWriter whose i2x writes raise, as a full disk or a broken plugin would; the
    trainer's own scalars still go through."""

    def __init__(self, writer):
        self._writer = writer

    def __getattr__(self, name):
        real = getattr(self._writer, name)
        if not callable(real):
            return real

        def call(*args, **kwargs):
            tag = args[0] if args and isinstance(args[0], str) else kwargs.get("tag", "")
            if tag.startswith("i2x") or name == "add_custom_scalars":
                raise OSError(errno.EIO, f"injected writer failure in {name}")
            return real(*args, **kwargs)

        return call


def test_a_failing_tensorboard_writer_is_isolated(tmp_path, digits):
    logger = TensorBoardLogger(tmp_path)
    logger._experiment = _BrokenForI2X(logger.experiment)
    cb = I2XCallback(digits[1], num_prototypes=8, views=ViewOptions(time_budget=None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = _fit(tmp_path, digits, [cb], logger=logger)
    ours = _ours(caught)
    assert len(ours) == 1 and "injected writer failure" in ours[0]
    assert trainer.current_epoch == 3
    run = I2XRun.load(cb.run.path)
    assert run.num_checkpoints == 3  # the evidence is on disk all the same
    # per checkpoint: the scalars and text, then the images
    assert [(e["type"], e["epoch"]) for e in run.errors] == [("OSError", t) for t in (0, 0, 1, 1, 2, 2)]
    assert cb.explanation is not None


def test_a_full_disk_is_isolated_and_the_run_stays_consistent(tmp_path, digits, monkeypatch):
    """Every write of the run fails with ENOSPC during the second epoch's record; training goes
    on, the run on disk is a consistent prefix, and recording resumes when space is back, the
    failure itself recorded with the next write."""
    real, epoch = atomic_module.write_bytes, {"now": 0}

    def write_bytes(path, data):
        if epoch["now"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    class Clock(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            epoch["now"] = trainer.current_epoch

    monkeypatch.setattr(atomic_module, "write_bytes", write_bytes)
    # the injection is keyed to the training epoch, so the analysis runs on the training thread here
    # (in the background it would write during the next epoch); failures in the worker: test_callback
    cb = I2XCallback(digits[1], num_prototypes=8, async_analysis=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = _fit(tmp_path, digits, [Clock(), cb])
    ours = _ours(caught)
    assert len(ours) == 1 and "No space left on device" in ours[0] and "epoch 1" in ours[0]
    assert trainer.current_epoch == 3
    run = I2XRun.load(cb.run.path)
    assert [c["epoch"] for c in run.checkpoints] == [0, 2]
    # the failure could not be written at the time; the next manifest write carries it
    assert [(e["type"], e["epoch"]) for e in run.errors] == [("OSError", 1)] and "ckpt-00001" in run.errors[0]["message"]
    assert run.explain().beta.shape == (1, 8, 10)


@pytest.mark.slow
def test_a_model_under_torch_compile_is_explained_like_the_eager_model(tmp_path, digits):
    """The probe pass runs a compiled model eagerly (a compiled graph hides the target layer's
    output from hooks and autograd); the maps equal those of the same weights uncompiled."""
    model = TinyCNN()
    cb = I2XCallback(digits[1], num_prototypes=8, run_dir=tmp_path / "compiled")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, digits, [cb], model=torch.compile(model), max_epochs=2)
    assert _ours(caught) == []
    compiled = I2XRun.load(tmp_path / "compiled")
    assert compiled.num_checkpoints == 2 and compiled.errors == []

    eager = I2XCallback(digits[1], num_prototypes=8, run_dir=tmp_path / "eager")
    pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[eager])).validate(model, DataLoader(digits[1], batch_size=100), verbose=False)
    np.testing.assert_allclose(compiled.confidences()[-1], eager.run.confidences()[0], atol=1e-5)
    np.testing.assert_allclose(compiled.cams()[-1].astype(np.float32), eager.run.cams()[0].astype(np.float32), atol=2e-3)
