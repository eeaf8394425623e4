"""End to end on real MNIST (from the data dir; skipped when no local copy is found, failed instead
with I2X_REQUIRE_DATA=1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from torch.utils.data import DataLoader, Subset

from lightning_i2x import I2XCallback, I2XRun
from lightning_i2x.__main__ import main as cli

from .conftest import trainer_kwargs
from demo_data import balanced_indices, load_mnist
from demo_models import SmallCNN

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, local_data_dir):
    train, test = load_mnist(train=True), load_mnist(train=False)
    probe = Subset(test, balanced_indices(test.tensors[1], 20).tolist())
    cb = I2XCallback(probe, target_layer="features", num_prototypes=16, class_names=test.classes)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path_factory.mktemp("mnist"), max_epochs=3))
    trainer.callbacks.append(cb)
    trainer.fit(SmallCNN(lr=3e-3), DataLoader(Subset(train, range(3000)), batch_size=100, shuffle=True), DataLoader(Subset(test, range(500)), batch_size=250))
    return cb.run.path


def test_three_epochs_on_mnist_give_a_run_with_an_explanation(mnist_run):
    run = I2XRun.load(mnist_run)
    assert run.num_checkpoints == 3 and run.num_probe == 200 and run.feature_shape == (7, 7)
    assert run.class_names[7] == "seven"
    expl = run.explain()
    assert expl.beta.shape == (2, 16, 10) and np.abs(expl.beta).max() > 0
    assert sum(len(expl.shared_prototypes(c)) for c in range(10)) > 0
    assert len(expl.learning_order()) == 45
    acc = [(y.argmax(1) == run.labels).mean() for y in run.confidences()]
    # the model learns MNIST: measured 0.235, 0.595, 0.715 on this probe at the three records
    # (seed 0, 3000 training images); the bounds keep a margin of about 0.05 and 0.1
    assert acc[-1] > 0.65 and acc[0] < acc[1] < acc[2] and acc[-1] - acc[0] > 0.3, acc


def test_cli_summary(mnist_run, capsys):
    assert cli(["summary", str(mnist_run)]) == 0
    out = capsys.readouterr().out
    assert "3 checkpoints, 16 prototypes" in out and "## Uncertain prototypes" in out and "### seven" in out
    assert cli(["summary", str(mnist_run.parent)]) == 2
    assert "holds no I2X run" in capsys.readouterr().err


def test_demo_script_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mnist_demo.py"), "--epochs", "1", "--train-size", "1000",
         "--val-checks-per-epoch", "2", "--probe-per-class", "10", "--num-prototypes", "8", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "I2X run:" in out.stdout and "(2 checkpoints, 8 prototypes, 100 probe images)" in out.stdout
    run_dir = out.stdout.split("I2X run:")[1].split()[0]
    assert I2XRun.load(run_dir).num_checkpoints == 2
