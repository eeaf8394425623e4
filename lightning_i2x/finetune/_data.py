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
from ..perturb import default_sigma, perturb, pixel_mask, resample_donors
from ._search import Selection

__all__ = ["MaskedDataset", "donor_map", "mean_image", "MEAN_SAMPLES", "RegionDataset", "one_loader", "training_samples", "layer_sample", "loader_like", "curate"]


MEAN_SAMPLES = 4096
"""At most this many searched samples (a seeded subset) give ``mask_fill="mean"``'s mean image."""


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
    """The dataset with the pixels of the flagged regions replaced by ``perturb`` (the fills the
    reliance measure uses, one implementation); other samples and other pixels are returned
    unchanged. ``regions`` maps a dataset index to its (h, w) location mask; the noise of sample i
    is seeded with (seed, i), so every epoch sees the same images.

    The content-removing fills need other images: ``"resample"`` takes the region's pixels from
    ``donors[i]`` (a dataset index: another sample, of another class, ``donor_map``), ``"mean"``
    from ``reference`` (the data's mean image, ``mean_image``). A blur keeps a uniform region's
    shade; these two remove it, so the counterexample no longer shows what it claims to hide."""

    def __init__(self, dataset: Dataset, regions: dict[int, np.ndarray], fill: str = "blur", *, seed: int = 0,
                 sigma: float | None = None, baseline: float | None = None, donors: dict[int, int] | None = None,
                 reference: torch.Tensor | None = None):
        if fill not in FILLS:
            raise ValueError(f"mask_fill must be one of {FILLS}, got {fill!r}")
        self.dataset = dataset
        self.regions = {int(k): np.asarray(v, dtype=bool) for k, v in regions.items()}
        self.donors = {int(k): int(v) for k, v in (donors or {}).items()}
        if fill == "resample":
            missing = sorted(set(self.regions) - set(self.donors))
            if missing:
                raise ValueError(f'mask_fill "resample" takes each flagged sample\'s region from a donor sample: donors= lacks '
                                 f"{len(missing)} flagged indices (first {missing[:3]}); donor_map builds it")
        if fill == "mean" and not isinstance(reference, torch.Tensor):
            raise ValueError('mask_fill "mean" puts in the data\'s mean image: pass reference= a (C, H, W) tensor (mean_image)')
        self.fill, self.seed, self.sigma, self.baseline, self.reference = fill, int(seed), sigma, baseline, reference

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
        reference = self.reference
        if self.fill == "resample":
            reference = split_item(self.dataset[self.donors[int(index)]], "the training Dataset", "fine-tuning")[0]
        x = perturb(x, big, self.fill, seed=self.seed * 1_000_003 + int(index), sigma=sigma, baseline=self.baseline,
                    reference=reference)
        return (x, *rest) if isinstance(item, tuple) else [x, *rest]


def donor_map(indices: np.ndarray, labels: np.ndarray, seed: int) -> dict[int, int]:
    """{dataset index: its donor's dataset index} for ``mask_fill="resample"``: over the searched
    samples, each one's donor drawn by ``perturb.resample_donors`` (another class, seeded), the
    choice the reliance measure makes over the probe."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    d = resample_donors(np.asarray(labels).reshape(-1), seed)
    return dict(zip(idx.tolist(), idx[d].tolist()))


def mean_image(dataset: Dataset, indices: np.ndarray, max_samples: int = MEAN_SAMPLES, seed: int = 0) -> torch.Tensor:
    """The mean (C, H, W) image of ``dataset[indices]`` (a seeded subset of ``max_samples`` when
    there are more), in float64 then the images' dtype: ``mask_fill="mean"``'s values."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("the mean image needs at least one sample")
    if idx.size > max_samples:
        idx = np.sort(np.random.default_rng([int(seed), 0x3EA7]).choice(idx, max_samples, replace=False))
    total, dtype = None, None
    for i in idx.tolist():
        x = split_item(dataset[i], "the training Dataset", "fine-tuning")[0]
        dtype = x.dtype
        total = x.double() if total is None else total + x.double()
    return (total / idx.size).to(dtype)


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
    every searched sample with the flagged regions perturbed ("mask"; the resampling fill's donors
    and the mean image come from the searched samples) or marked ("penalise")."""
    if options.mode == "remove":
        kept = selection.kept_indices()
        if kept.size == 0:
            raise ValueError("every training sample contains an uncertain prototype: the curated set would be empty")
        return Subset(dataset, kept.tolist())
    regions = {int(i): r for i, r, f in zip(selection.indices, selection.regions, selection.flagged) if f}
    if options.mode == "penalise":
        return Subset(RegionDataset(dataset, regions), selection.indices.tolist())
    fill = options.mask_fill
    donors = donor_map(selection.indices, selection.labels, options.seed) if fill == "resample" else None
    reference = mean_image(dataset, selection.indices, seed=options.seed) if fill == "mean" else None
    masked = MaskedDataset(dataset, regions, fill, seed=options.seed, baseline=options.mask_baseline, donors=donors,
                           reference=reference)
    return Subset(masked, selection.indices.tolist())
