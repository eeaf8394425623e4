"""DDP with two CPU processes (gloo): the probe is split across ranks, gathered in probe order,
written by rank 0, and the explanation equals the one-process explanation of the same weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_i2x import I2XCallback, I2XRun, ProbePassOptions

from .conftest import TinyCNN, trainer_kwargs
from .ddp_fit import digits

ROOT = Path(__file__).resolve().parents[1]


def _ddp_fit(out: Path, *args: str) -> subprocess.CompletedProcess:
    out.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_fit.py"), str(out), *args], cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "always"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("probe_size", [
    201,  # 3,216 feature vectors: under the stream's 4,096-vector sample, the activations are gathered whole
    297,  # 4,752: every rank streams its share, only the fit's moments, sample rows and results cross
])
def test_ddp_records_the_same_evidence_and_explanation_as_one_process(tmp_path, probe_size):
    out = tmp_path / "ddp"
    _ddp_fit(out, "-", str(probe_size))
    assert (out / "done").read_text() == "3"
    ddp = I2XRun.load(out / "run")
    assert [c["epoch"] for c in ddp.checkpoints] == [0, 1, 2] and not ddp.errors

    # replay the weights each record saw, in one process
    _, probe = digits(probe_size)
    cb = I2XCallback(probe, num_prototypes=8, run_dir=tmp_path / "single", probe_pass=ProbePassOptions(batch_size=64))
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb]))
    model = TinyCNN()
    for epoch in range(3):
        model.load_state_dict(torch.load(out / f"weights-{epoch}.pt", weights_only=True))
        trainer.validate(model, DataLoader(probe, batch_size=100), verbose=False)
    single = I2XRun.load(tmp_path / "single")

    assert ddp.num_probe == single.num_probe == probe_size  # odd: the second rank's share is padded
    np.testing.assert_array_equal(ddp.labels, single.labels)
    np.testing.assert_allclose(ddp.confidences(), single.confidences(), atol=1e-5)
    np.testing.assert_allclose(ddp.cams().astype(np.float32), single.cams().astype(np.float32), atol=2e-3)
    np.testing.assert_array_equal(ddp.assignment(), single.assignment())
    a, b = ddp.explain(), single.explain()
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-3, atol=1e-3 * np.abs(b.beta).max())
    assert [(u.prototype, u.classes, u.flips) for u in a.uncertain] == [(u.prototype, u.classes, u.flips) for u in b.uncertain]
    assert [a.shared_prototypes(c) for c in range(10)] == [b.shared_prototypes(c) for c in range(10)]


@pytest.mark.slow
def test_a_failure_on_one_rank_skips_that_record_on_every_rank_and_training_goes_on(tmp_path):
    """Rank 1's probe pass raises at the second record: no rank waits forever in the gather, the
    record is skipped, rank 0 records which rank failed, and the later record still happens."""
    out = tmp_path / "ddp"
    proc = _ddp_fit(out, "1")
    assert (out / "done").read_text() == "2"
    run = I2XRun.load(out / "run")
    assert [c["epoch"] for c in run.checkpoints] == [0, 2]
    assert [(e["where"], e["epoch"]) for e in run.errors] == [("probe pass", 1)]
    assert "rank(s) [1]" in run.errors[0]["message"]
    assert "injected probe failure on rank 1" in proc.stderr  # rank 1 warned with the cause


def test_a_library_cam_method_is_refused_under_several_processes():
    """pytorch-grad-cam's backward into every parameter would meet DDP's gradient reduction."""
    _, probe = digits()
    cb = I2XCallback(probe, num_prototypes=8, cam="gradcam++")

    class TwoRanks:
        world_size, is_global_zero, strategy = 2, True, None

    with pytest.raises(ValueError, match="cannot run in 2 processes"):
        cb.setup(TwoRanks(), TinyCNN(), "fit")
