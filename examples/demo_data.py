"""Image data sets for the demo, the tests and the benchmarks (not part of the library).

Where the data lives: ``data_dir`` if given, else ``$I2X_DATA_DIR``, else ``shared/data`` beside
this repository's folder when it exists; with none of those, torchvision downloads into
``~/.cache/lightning_i2x``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["resolve_data_dir", "load_mnist", "load_cifar10_subset", "balanced_indices"]

_TORCHVISION = {"mnist": ("MNIST", "mnist"), "fashion-mnist": ("FashionMNIST", "fashion-mnist")}
_RAW_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding ``mnist/``, ``fashion-mnist/``, ``cifar10/``, or None (download)."""
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "data"
    for candidate in (data_dir, os.environ.get("I2X_DATA_DIR"), beside_repo):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    if data_dir is not None:
        raise FileNotFoundError(f"data dir {data_dir} does not exist")
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("I2X_CACHE_DIR", Path.home() / ".cache" / "lightning_i2x"))


def load_mnist(train: bool, data_dir: str | os.PathLike | None = None, name: str = "mnist") -> TensorDataset:
    """MNIST or Fashion-MNIST as a TensorDataset of (1, 28, 28) float images in [0, 1], normalised
    to zero mean and unit variance, with ``classes`` set."""
    import torchvision

    cls_name, folder = _TORCHVISION[name]
    root = _cache_dir()
    src = resolve_data_dir(data_dir)
    if src is not None and (src / folder).is_dir():
        raw = root / cls_name / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for f in _RAW_FILES:
            link = raw / f
            if not link.exists():
                link.symlink_to((src / folder / f).resolve())
    # with the raw files linked in, "download" only verifies their md5s and unpacks them
    ds = getattr(torchvision.datasets, cls_name)(str(root), train=train, download=True)
    x = ds.data.float().div_(255.0).unsqueeze(1)
    x = (x - 0.5) / 0.5
    out = TensorDataset(x, ds.targets.clone())
    out.classes = [str(c).split(" - ")[-1] for c in ds.classes]
    return out


def load_cifar10_subset(train: bool, data_dir: str | os.PathLike | None = None) -> TensorDataset:
    """The CIFAR-10 subset in ``<data_dir>/cifar10/cifar-10-batches-py-subset1000`` (first 1000
    images of each batch), read from its pickles (plain arrays only)."""
    src = resolve_data_dir(data_dir)
    if src is None:
        raise FileNotFoundError("the CIFAR-10 subset needs a data dir (--data-dir or $I2X_DATA_DIR)")
    folder = src / "cifar10" / "cifar-10-batches-py-subset1000"
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(d[b"data"], dtype=np.uint8))
        ys.append(np.asarray(d[b"labels"], dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs)).view(-1, 3, 32, 32).float().div_(255.0)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    out = TensorDataset((x - mean) / std, torch.from_numpy(np.concatenate(ys)))
    with open(folder / "batches.meta", "rb") as fh:
        out.classes = [c.decode() for c in pickle.load(fh, encoding="bytes")[b"label_names"]]
    return out


def balanced_indices(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """``per_class`` indices of each class, drawn with a private generator."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        out.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(out).sort().values
