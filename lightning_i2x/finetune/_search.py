"""Which training samples hold the targeted prototypes (Step 7's training-set search).

``flag_samples`` is a plain function on arrays (the salient region is ``analysis.salient_mask``);
``find_uncertain_samples`` streams a dataset through the model's fast GradCAM pass and the run's
FAISS index in batches, keeping only the flags and the location masks, never the features.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .._model import ForwardFn, split_batch
from ..analysis import SALIENCY_THRESHOLD, salient_mask
from ..options import MaskRegion
from ..prototypes import Prototypes
from ..saliency import probe_batches
from ._targets import Target

__all__ = ["Selection", "flag_samples", "find_uncertain_samples"]

MASK_REGIONS: tuple[str, ...] = get_args(MaskRegion)


def flag_samples(
    assignment: np.ndarray,
    salient: np.ndarray,
    labels: np.ndarray,
    targets: Sequence[Target],
    region: str = "salient",
) -> tuple[np.ndarray, np.ndarray]:
    """Which samples each target flags, and which of their locations to perturb.

    assignment (B, L) prototype id of every location; salient (B, L) bool; labels (B,). A
    ``PairTarget`` flags the samples of its two classes with a salient location assigned to one of
    its prototypes; a ``PrototypeTarget`` flags any class (with ``region="all"`` wherever the
    prototype is, salient or not).

    Returns flags (T, B) bool (targets in order) and regions (B, L) bool: for flagged samples, the
    union over their targets of the locations assigned to the target's prototypes, salient ones
    only (``region="salient"``) or all of them (``"all"``).
    """
    if isinstance(targets, dict):
        raise TypeError("flag_samples takes a list of targets: [PairTarget((a, b), prototypes), ...] or "
                        "[PrototypeTarget(prototypes)], not a {pair: prototypes} dict")
    a = np.asarray(assignment)
    s = np.asarray(salient, dtype=bool)
    y = np.asarray(labels).reshape(-1)
    if a.ndim != 2 or s.shape != a.shape or y.shape != a.shape[:1]:
        raise ValueError(f"assignment (B, L), salient (B, L) and labels (B,) must agree, got {a.shape}, {s.shape}, {y.shape}")
    if region not in MASK_REGIONS:
        raise ValueError(f"region must be one of {MASK_REGIONS}, got {region!r}")
    flags = np.zeros((len(targets), a.shape[0]), dtype=bool)
    regions = np.zeros(a.shape, dtype=bool)
    for t, target in enumerate(targets):
        if not target.prototypes:
            continue
        holds = np.isin(a, np.asarray(target.prototypes, dtype=a.dtype))
        flags[t] = target.flags(holds, s, y, region)
        regions[flags[t]] |= (holds & s if region == "salient" else holds)[flags[t]]
    return flags, regions


# -- streaming the training set ------------------------------------------------------------------
@dataclass
class Selection:
    """Which training samples hold the targeted prototypes.

    indices (n,): the dataset indices searched, in order; labels (n,); flags (T, n) bool: sample
    flagged by target t; regions (n, h, w) bool: the locations to perturb (False for unflagged
    samples)."""

    targets: list[Target]
    indices: np.ndarray
    labels: np.ndarray
    flags: np.ndarray
    regions: np.ndarray
    seconds: float = 0.0

    @property
    def flagged(self) -> np.ndarray:
        """(n,) flagged by any target."""
        return self.flags.any(axis=0) if self.flags.size else np.zeros(len(self.indices), bool)

    def counts(self) -> dict[Target, int]:
        """Samples flagged by each target."""
        return {t: int(self.flags[i].sum()) for i, t in enumerate(self.targets)}

    def kept_indices(self) -> np.ndarray:
        return self.indices[~self.flagged]


def find_uncertain_samples(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    prototypes: Prototypes,
    targets: Sequence[Target],
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
        f, r = flag_samples(assignment, salient, y.numpy(), targets, region)
        flags.append(f)
        regions.append(r.reshape(b, h, w))
        labels.append(y.numpy())
        del feats, assignment, pb
    return Selection(
        targets=list(targets),
        indices=indices,
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        flags=np.concatenate(flags, axis=1) if flags else np.zeros((len(targets), 0), bool),
        regions=np.concatenate(regions) if regions else np.zeros((0, 1, 1), bool),
        seconds=time.perf_counter() - t0,
    )
