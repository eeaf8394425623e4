"""Every check a fit must pass before its first training step: pure functions of the probe, the
target layer and the options, testable without a Trainer (``I2XCallback.setup`` calls them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..analysis import resolve_pairs
from ..options import FinetuneOptions, ViewOptions
from ..saliency import TargetLayer, saliency_method

__all__ = ["check_fit", "check_writable"]


def check_fit(
    labels: torch.Tensor,
    layer: TargetLayer,
    *,
    num_prototypes: int,
    class_names: Sequence[str] | None,
    cam: str = "gradcam",
    views: ViewOptions = ViewOptions(),
    world_size: int = 1,
    finetune: FinetuneOptions | None = None,
) -> list[str]:
    """The class names of the run, after checking that the probe, the layer and the options fit the
    model and the strategy: probe labels within the model's classes, K at most the probe's feature
    vectors, one name per class, pinned view classes that exist, a saliency method that runs under
    this many processes, and auto fine-tuning in one process on pairs that exist. ``class_names``
    None: the indices. Raises ValueError saying what is wrong and what to do."""
    m = layer.num_classes
    if labels.numel() and (labels.min() < 0 or labels.max() >= m):
        bad = labels[(labels < 0) | (labels >= m)].unique()[:5].tolist()
        raise ValueError(f"probe labels {bad} lie outside the model's {m} classes [0, {m})")
    _, h, w = layer.feature_shape
    locations = labels.shape[0] * h * w
    if num_prototypes > locations:
        raise ValueError(
            f"num_prototypes={num_prototypes} exceeds the {locations} probe feature vectors "
            f"({labels.shape[0]} images x {h}x{w} locations at {layer.name!r}): lower it or enlarge the probe"
        )
    names = [str(c) for c in (class_names or range(m))]
    if len(names) != m:
        raise ValueError(f"{len(names)} class names for a model with {m} classes")
    unknown = [c for c in views.classes or () if (c not in names if isinstance(c, str) else not 0 <= c < m)]
    if unknown:
        raise ValueError(f"ViewOptions.classes {unknown} are not classes of this model; its classes are {names} (or indices 0..{m - 1})")
    if world_size > 1 and not saliency_method(cam).ddp_safe:
        raise ValueError(
            f"cam={cam!r} cannot run in {world_size} processes: only cam='gradcam' runs under DDP "
            "(pytorch-grad-cam and I-GOS backpropagate into every parameter, which DDP would reduce across "
            "ranks; the native path stops at the target layer)"
        )
    if finetune is not None:
        if world_size > 1:
            raise ValueError(
                f"auto_finetune runs at the end of fit in one process; this fit runs in {world_size}: "
                "fine-tune afterwards with lightning_i2x.PerturbationFinetuner on one device"
            )
        if finetune.pairs is not None:
            resolve_pairs(finetune.pairs, names)
    return names


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` made if needed and proven writable; ValueError naming it otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe_file = path / f".write-test-{os.getpid()}"
        probe_file.write_bytes(b"")
        probe_file.unlink()
    except OSError as e:
        raise ValueError(f"run_dir {str(path)!r} cannot be written ({e.strerror or e}); pass a writable run_dir") from None
    return path
