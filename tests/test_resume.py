"""A resumed fit continues its run directory as if it had never stopped."""

from __future__ import annotations

import shutil

import lightning.pytorch as pl
import numpy as np
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_i2x import I2XCallback, I2XRun

from .conftest import TinyCNN, trainer_kwargs


def _fit(root, digits, run_dir, max_epochs, ckpt_path=None, probe=None, **cb_kw):
    pl.seed_everything(0, verbose=False)
    cb = I2XCallback(digits[1] if probe is None else probe, num_prototypes=8, run_dir=run_dir, **cb_kw)
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    kw = trainer_kwargs(root, max_epochs=max_epochs, deterministic=True, callbacks=[cb, ckpt])
    kw["enable_checkpointing"] = True
    trainer = pl.Trainer(**kw)
    train, probe_set = digits
    trainer.fit(TinyCNN(dropout=0.0), DataLoader(train, batch_size=64), DataLoader(probe_set, batch_size=100), ckpt_path=ckpt_path)
    return cb


def test_resume_continues_the_run_without_duplicates(tmp_path, digits):
    _fit(tmp_path / "whole", digits, tmp_path / "run", max_epochs=4)
    shutil.copytree(tmp_path / "run", tmp_path / "uninterrupted")
    # as if killed during epoch 3: the run dir holds 3 checkpoints while the last Lightning
    # checkpoint was saved after epoch 1 (2 checkpoints); resuming drops the third and records it again
    I2XRun.load(tmp_path / "run").truncate(3)
    resumed = _fit(tmp_path / "resumed", digits, tmp_path / "run", max_epochs=4,
                   ckpt_path=tmp_path / "whole" / "ckpt" / "epoch=1.ckpt")
    assert resumed.run.path == tmp_path / "run"
    a, b = I2XRun.load(tmp_path / "uninterrupted"), I2XRun.load(tmp_path / "run")
    assert [c["epoch"] for c in b.checkpoints] == [0, 1, 2, 3]
    np.testing.assert_array_equal(a.cams(), b.cams())
    np.testing.assert_array_equal(a.assignment(), b.assignment())
    ea, eb = a.explain(), b.explain()
    np.testing.assert_allclose(ea.beta, eb.beta)
    assert ea.to_dict() == eb.to_dict()


def test_resume_with_another_probe_is_refused(tmp_path, digits):
    _fit(tmp_path / "first", digits, tmp_path / "run", max_epochs=2)
    x, y = digits[1].tensors
    with pytest.raises(ValueError, match="cannot resume the I2X run.*probe"):
        _fit(tmp_path / "second", digits, tmp_path / "run", max_epochs=3, probe=(x[:100], y[:100]),
             ckpt_path=tmp_path / "first" / "ckpt" / "epoch=1.ckpt")


def test_a_new_fit_refuses_a_run_dir_that_holds_a_run(tmp_path, digits):
    _fit(tmp_path / "first", digits, tmp_path / "run", max_epochs=1)
    with pytest.raises(ValueError, match="already holds an I2X run"):
        _fit(tmp_path / "second", digits, tmp_path / "run", max_epochs=1)
