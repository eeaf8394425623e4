"""The fine-tuning's data: the checks on the user's loaders, the datasets that remove, mask or
mark the flagged samples, and loaders built like the user's (same batch size, workers, collate_fn
and shuffling, seeded per epoch so every strategy of a seed sees the same order)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, Subset

from .._model import split_item
from ..options import FILLS, FinetuneOptions
from ..perturb import default_sigma, perturb, pixel_mask
from ._search import Selection

__all__ = ["MaskedDataset", "RegionDataset", "one_loader", "training_samples", "layer_sample", "loader_like", "curate"]


def one_loader(loaders: Any, what: str) -> DataLoader:
    """The one DataLoader of ``loaders`` (a loader or a one-element list of it)."""
    if isinstance(loaders, (list, tuple)) and len(loaders) == 1:
        loaders = loaders[0]
    if not isinstance(loaders, DataLoader):
        raise TypeError(f"{what} must be one torch DataLoader, got {type(loaders).__name__}")
    return loaders


def training_samples(loader: DataLoader, max_samples: int | None, seed: int) -> tuple[Dataset, np.ndarray]:
    """The loader's dataset and the indices fine-tuned on: all, or a seeded sorted subset of
    ``max_samples``. The curated set is a Subset, so the dataset must be map-style."""
    ds = loader.dataset
    if isinstance(ds, IterableDataset) or not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise TypeError(
            f"the training set ({type(ds).__name__}) cannot be indexed: the curated set is a Subset of it, so it "
            "must be a map-style Dataset with __len__ and __getitem__ (not an IterableDataset)"
        )
    n = len(ds)
    if n == 0:
        raise ValueError("the training set is empty")
    try:
        first = ds[0]
    except Exception as e:
        raise TypeError(f"the training set ({type(ds).__name__}) cannot be indexed: ds[0] raised {type(e).__name__}: {e}") from None
    split_item(first, "the training Dataset", "fine-tuning")
    if max_samples is not None and max_samples < n:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:max_samples].sort().values.numpy()
    else:
        idx = np.arange(n)
    return ds, idx.astype(np.int64)


def layer_sample(dataset: Dataset, indices: np.ndarray) -> torch.Tensor:
    """Two copies of the first training image: the batch the target layer is resolved on."""
    x0 = split_item(dataset[int(indices[0])], "the training Dataset", "fine-tuning")[0]
    return x0.unsqueeze(0).expand(2, *x0.shape).clone()


def loader_like(loader: DataLoader, dataset: Dataset, seed: int, epoch: int) -> DataLoader:
    """A loader over ``dataset`` built like ``loader``, its shuffling seeded by (seed, epoch)."""
    shuffle = isinstance(loader.sampler, RandomSampler) or (loader.batch_sampler is not None
                                                           and isinstance(getattr(loader.batch_sampler, "sampler", None), RandomSampler))
    bs = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 64
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return DataLoader(dataset, batch_size=bs, shuffle=shuffle, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last, generator=g,
                      persistent_workers=False, worker_init_fn=loader.worker_init_fn)


class MaskedDataset(Dataset):
    """The dataset with the pixels of the flagged regions perturbed (``perturb``); other samples and
    other pixels are returned unchanged. ``regions`` maps a dataset index to its (h, w) location
    mask; the noise of sample i is seeded with (seed, i), so every epoch sees the same images."""

    def __init__(self, dataset: Dataset, regions: dict[int, np.ndarray], fill: str = "blur", *, seed: int = 0,
                 sigma: float | None = None, baseline: float | None = None):
        if fill not in FILLS:
            raise ValueError(f"mask_fill must be one of {FILLS}, got {fill!r}")
        self.dataset = dataset
        self.regions = {int(k): np.asarray(v, dtype=bool) for k, v in regions.items()}
        self.fill, self.seed, self.sigma, self.baseline = fill, int(seed), sigma, baseline

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        region = self.regions.get(int(index))
        if region is None:
            return item
        x, rest = split_item(item, "the training Dataset", "fine-tuning")
        big = pixel_mask(region, tuple(x.shape[-2:]))
        sigma = default_sigma(tuple(x.shape[-2:]), region.shape) if self.sigma is None else self.sigma
        x = perturb(x, big, self.fill, seed=self.seed * 1_000_003 + int(index), sigma=sigma, baseline=self.baseline)
        return (x, *rest) if isinstance(item, tuple) else [x, *rest]


class RegionDataset(Dataset):
    """(image, label, mask) samples for ``mode="penalise"``: ``mask`` (H, W) float32 is 1 on the
    pixels of the sample's flagged region (``regions``: dataset index -> (h, w) location mask) and
    0 elsewhere, so the penalty knows where the shortcut is."""

    def __init__(self, dataset: Dataset, regions: dict[int, np.ndarray]):
        self.dataset = dataset
        self.regions = {int(k): np.asarray(v, dtype=bool) for k, v in regions.items()}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, rest = split_item(self.dataset[index], "the training Dataset", "fine-tuning")
        size = tuple(x.shape[-2:])
        region = self.regions.get(int(index))
        mask = (torch.from_numpy(pixel_mask(region, size)).float() if region is not None and region.any()
                else torch.zeros(size, dtype=torch.float32))
        return x, rest[0], mask


def curate(dataset: Dataset, selection: Selection, options: FinetuneOptions) -> Dataset:
    """The curated training set of ``options.mode``: without the flagged samples ("remove"), or
    every searched sample with the flagged regions perturbed ("mask") or marked ("penalise")."""
    if options.mode == "remove":
        kept = selection.kept_indices()
        if kept.size == 0:
            raise ValueError("every training sample contains an uncertain prototype: the curated set would be empty")
        return Subset(dataset, kept.tolist())
    regions = {int(i): r for i, r, f in zip(selection.indices, selection.regions, selection.flagged) if f}
    if options.mode == "penalise":
        return Subset(RegionDataset(dataset, regions), selection.indices.tolist())
    masked = MaskedDataset(dataset, regions, options.mask_fill, seed=options.seed, baseline=options.mask_baseline)
    return Subset(masked, selection.indices.tolist())
