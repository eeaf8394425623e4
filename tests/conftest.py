"""Shared fixtures: scikit-learn's real 8x8 digits and a tiny CNN that trains on them in seconds."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:  # the demo model and data loaders live with the examples, not in the library
    sys.path.insert(0, str(EXAMPLES))

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, so each computes on one thread
    torch.set_num_threads(1)
    # and each unpacks the MNIST files into its own cache (examples/demo_data.py), so no worker reads another's half-written
    # copy; one per checkout too, since the cache links the data folder beside it: another clone's links dangle once it is gone
    checkout = hashlib.sha1(str(Path(__file__).resolve().parents[1]).encode()).hexdigest()[:10]
    os.environ["I2X_CACHE_DIR"] = str(Path(os.environ.get("I2X_CACHE_DIR", Path.home() / ".cache" / "lightning_i2x"))
                                      / f"tests-{checkout}" / f"xdist-{os.environ['PYTEST_XDIST_WORKER']}")


class TinyCNN(pl.LightningModule):
    """8x8 digits -> ``features`` (16 channels, 4x4 map) -> global pool -> linear."""

    def __init__(self, num_classes: int = 10, lr: float = 0.01, dropout: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(16, num_classes))
        self.lr = lr

    def forward(self, x):
        return self.head(self.features(x))

    def training_step(self, batch, _i):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _i):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


@pytest.fixture(scope="session")
def digits():
    """(train, probe) TensorDatasets of real digits scaled to [-1, 1]; probe = 200 images."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.int64)
    train, probe = TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:1700], y[1500:1700])
    probe.classes = [f"d{c}" for c in range(10)]
    return train, probe


@pytest.fixture(scope="session")
def local_data_dir():
    """The local data folder (examples/demo_data.py's resolve_data_dir: $I2X_DATA_DIR, else
    ../shared/data beside the checkout). Without one the test skips, or, with I2X_REQUIRE_DATA=1
    (as in CI, see .ci/run), fails: nothing downloads in the tests."""
    import os

    from demo_data import resolve_data_dir

    found = resolve_data_dir()
    if found is None or not (found / "mnist").is_dir():
        message = "no local MNIST (set I2X_DATA_DIR to a folder holding mnist/)"
        if os.environ.get("I2X_REQUIRE_DATA") == "1":
            pytest.fail(f"I2X_REQUIRE_DATA=1 but {message}")
        pytest.skip(message)
    return found


def trainer_kwargs(tmp_path, **kw):
    base = dict(
        default_root_dir=tmp_path, max_epochs=3, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, accelerator="cpu", devices=1, enable_checkpointing=False,
    )
    base.update(kw)
    return base


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyCNN()



@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster than several fighting over shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def trained_tiny_cnn(digits, steps: int) -> TinyCNN:
    """A TinyCNN after ``steps`` SGD steps of 64 real digits (seed 0), in eval mode."""
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = digits[0].tensors
    for i in range(steps):
        sl = slice((i * 64) % 1400, (i * 64) % 1400 + 64)
        opt.zero_grad()
        F.cross_entropy(model(x[sl]), y[sl]).backward()
        opt.step()
    return model.eval()


@contextlib.contextmanager
def global_rng_untouched():
    """Assert that the code inside draws nothing from the torch, NumPy and Python global generators."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    assert torch.equal(torch.get_rng_state(), torch_state), "the torch generator moved"
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and np.random.get_state()[2] == np_state[2], "NumPy's moved"
    assert random.getstate() == py_state, "Python's random moved"
