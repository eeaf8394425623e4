"""Which training samples hold a pair's uncertain prototypes, and how to perturb them (Step 7).

Plain functions on arrays (``resolve_pairs``, ``flag_samples``; the salient region is
``analysis.salient_mask``, the fills ``lightning_i2x.perturb``), ``MaskedDataset`` for mask mode,
and ``find_uncertain_samples``, which streams a dataset through the model's fast GradCAM pass and the run's FAISS index in batches.
``lightning_i2x.finetune`` builds the fine-tuning on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .._model import ForwardFn, split_batch, split_item
from ..analysis import SALIENCY_THRESHOLD, Pair, salient_mask
from ..perturb import FILLS, default_sigma, perturb, pixel_mask
from ..prototypes import Prototypes
from ..saliency import probe_batches

__all__ = [
    "Pair",
    "ANY_CLASS",
    "Selection",
    "MaskedDataset",
    "flag_samples",
    "pixel_mask",
    "perturb",
    "find_uncertain_samples",
]

MASK_FILLS = FILLS
MASK_REGIONS = ("salient", "all")

ANY_CLASS: Pair = (-1, -1)
"""A key of ``flag_samples``'s ``pair_protos`` whose prototypes flag samples of every class (the
targeting by prototypes, ``PerturbationFinetuner(prototypes=...)``)."""


# -- pure functions: which samples, which pixels ---------------------------------------------------
def flag_samples(
    assignment: np.ndarray,
    salient: np.ndarray,
    labels: np.ndarray,
    pair_protos: dict[Pair, Sequence[int]],
    region: str = "salient",
) -> tuple[np.ndarray, np.ndarray]:
    """Which samples contain which pair's uncertain prototypes.

    assignment (B, L) prototype id of every location; salient (B, L) bool; labels (B,).
    Sample i is flagged for pair (a, b) when its label is a or b and one of its salient locations is
    assigned to an uncertain prototype of (a, b); for the key ``ANY_CLASS``, whatever its label,
    and with ``region="all"`` when any of its locations (salient or not) is: a shortcut is hidden
    wherever it is, else the model goes on learning it from the images where GradCAM missed it.

    Returns flags (P, B) bool (pairs in the order of ``pair_protos``) and regions (B, L) bool: the
    locations of flagged samples to perturb in mask mode, the union over the pairs the sample is
    flagged for of the locations assigned to that pair's prototypes, salient ones only
    (``region="salient"``) or all of them (``"all"``).
    """
    a = np.asarray(assignment)
    s = np.asarray(salient, dtype=bool)
    y = np.asarray(labels).reshape(-1)
    if a.ndim != 2 or s.shape != a.shape or y.shape != a.shape[:1]:
        raise ValueError(f"assignment (B, L), salient (B, L) and labels (B,) must agree, got {a.shape}, {s.shape}, {y.shape}")
    if region not in MASK_REGIONS:
        raise ValueError(f"region must be one of {MASK_REGIONS}, got {region!r}")
    flags = np.zeros((len(pair_protos), a.shape[0]), dtype=bool)
    regions = np.zeros(a.shape, dtype=bool)
    for p, ((ca, cb), protos) in enumerate(pair_protos.items()):
        if len(protos) == 0:
            continue
        holds = np.isin(a, np.asarray(list(protos), dtype=a.dtype))
        in_pair = np.ones(y.shape, dtype=bool) if (ca, cb) == ANY_CLASS else (y == ca) | (y == cb)
        hit = holds & s
        flags[p] = in_pair & (holds if region == "all" and (ca, cb) == ANY_CLASS else hit).any(axis=1)
        regions[flags[p]] |= (hit if region == "salient" else holds)[flags[p]]
    return flags, regions


class MaskedDataset(Dataset):
    """The dataset with the pixels of the flagged regions perturbed (``perturb``); other samples and
    other pixels are returned unchanged. ``regions`` maps a dataset index to its (h, w) location
    mask; the noise of sample i is seeded with (seed, i), so every epoch sees the same images."""

    def __init__(self, dataset: Dataset, regions: dict[int, np.ndarray], fill: str = "blur", *, seed: int = 0,
                 sigma: float | None = None, baseline: float | None = None):
        if fill not in MASK_FILLS:
            raise ValueError(f"mask_fill must be one of {MASK_FILLS}, got {fill!r}")
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


# -- streaming the training set ------------------------------------------------------------------
@dataclass
class Selection:
    """Which training samples contain the pairs' uncertain prototypes.

    indices (n,): the dataset indices searched, in order; labels (n,); flags (P, n) bool: sample
    flagged for pair p; regions (n, h, w) bool: the locations to perturb in mask mode (False for
    unflagged samples)."""

    pairs: list[Pair]
    prototypes: dict[Pair, list[int]]
    indices: np.ndarray
    labels: np.ndarray
    flags: np.ndarray
    regions: np.ndarray
    seconds: float = 0.0

    @property
    def flagged(self) -> np.ndarray:
        """(n,) flagged for any pair."""
        return self.flags.any(axis=0) if self.flags.size else np.zeros(len(self.indices), bool)

    def counts(self) -> dict[Pair, int]:
        return {p: int(self.flags[i].sum()) for i, p in enumerate(self.pairs)}

    def removed_indices(self) -> np.ndarray:
        return self.indices[self.flagged]

    def kept_indices(self) -> np.ndarray:
        return self.indices[~self.flagged]


def find_uncertain_samples(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    prototypes: Prototypes,
    pair_protos: dict[Pair, list[int]],
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    cam: str = "gradcam",
    cam_target: str = "label",
    threshold: float = SALIENCY_THRESHOLD,
    region: str = "salient",
    forward_fn: ForwardFn | None = None,
    reshape_transform: Callable | None = None,
    progress: bool = True,
) -> Selection:
    """Stream ``dataset[indices]`` through the model in batches: per batch the GradCAM maps and
    target-layer features (``probe_batches``), every location assigned to its nearest prototype
    (``Prototypes.assign``: projection + FAISS search), then ``flag_samples``. Only the flags and
    the (n, h, w) location masks are kept, never the features."""
    from tqdm.auto import tqdm

    indices = np.asarray(indices, dtype=np.int64)
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_fn)
    flags, regions, labels = [], [], []
    t0 = time.perf_counter()
    bar = tqdm(loader, total=len(loader), desc="I2X: searching the training set", unit="batch", disable=not progress, leave=False)
    for batch in bar:
        x, y = split_batch(batch, "the training DataLoader")
        (pb,) = list(probe_batches(model, layer, x, y, cam=cam, cam_target=cam_target, batch_size=x.shape[0],
                                   reshape_transform=reshape_transform, forward_fn=forward_fn, normalise=True))
        b, d, h, w = pb.activations.shape
        feats = pb.activations.permute(0, 2, 3, 1).reshape(-1, d).float().cpu().numpy()
        assignment = prototypes.assign(feats).reshape(b, h * w)
        salient = salient_mask(pb.cams.cpu().numpy(), threshold)
        f, r = flag_samples(assignment, salient, y.numpy(), pair_protos, region)
        flags.append(f)
        regions.append(r.reshape(b, h, w))
        labels.append(y.numpy())
        del feats, assignment, pb
    n_pairs = len(pair_protos)
    return Selection(
        pairs=list(pair_protos),
        prototypes={p: list(v) for p, v in pair_protos.items()},
        indices=indices,
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        flags=np.concatenate(flags, axis=1) if flags else np.zeros((n_pairs, 0), bool),
        regions=np.concatenate(regions) if regions else np.zeros((0, 1, 1), bool),
        seconds=time.perf_counter() - t0,
    )
