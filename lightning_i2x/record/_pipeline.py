"""The record pipeline, with no Trainer in it: probe -> evidence -> run -> prototypes -> explanation.

``probe_pass`` runs a model over (a share of) the probe set and returns its ``ProbeEvidence``;
``Recorder.record`` appends that evidence to a run as a checkpoint, refits the prototypes on it and
returns the current explanation. ``open_run`` starts or resumes the run directory. The callback
(``lightning_i2x.callback``), the benchmarks and scripts all go through these same functions.

Example::

    >>> import torch, tempfile
    >>> from torch import nn
    >>> from lightning_i2x.layers import resolve_target_layer
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    >>> images, labels = torch.randn(12, 1, 6, 6), torch.arange(12) % 3
    >>> layer = resolve_target_layer(model, "1", images[:2], forward_fn=lambda m, x: m(x))
    >>> evidence = probe_pass(model, layer.module, images, labels)
    >>> evidence.cams.shape, evidence.confidences.shape
    (torch.Size([12, 6, 6]), torch.Size([12, 3]))
    >>> run = open_run(tempfile.mkdtemp(), images, labels, ["a", "b", "c"], layer, num_prototypes=4)
    >>> recorder = Recorder(num_prototypes=4)
    >>> explanation = recorder.record(run, evidence, epoch=0, global_step=10)
    >>> run.num_checkpoints, explanation.num_prototypes
    (1, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._model import ForwardFn
from ..analysis import Explanation
from ..options import ExplainOptions, ProbePassOptions, PrototypeOptions, RunConfig
from ..prototypes import Prototypes, PrototypeStream
from ..saliency import TargetLayer, probe_batches
from ..store import I2XRun
from ._probe import probe_fingerprint

__all__ = ["ProbeEvidence", "probe_pass", "Recorder", "open_run", "resume_run", "run_fingerprint", "MAX_STORED_PROBE_BYTES"]

MAX_STORED_PROBE_BYTES = 64 * 2**20
"""Probe images are kept in the run (float16) only up to this size."""


@dataclass
class ProbeEvidence:
    """What one probe pass yields, in probe order, float32 on the model's device: CAM maps
    (N, h, w), softmax confidences (N, M), and the target-layer features either whole
    (``activations`` (N, d, h, w)) or streamed into a ``PrototypeStream`` that keeps only their
    projections (``stream``; then ``activations`` is None), so memory does not grow with N x d."""

    activations: torch.Tensor | None
    cams: torch.Tensor
    confidences: torch.Tensor
    stream: PrototypeStream | None = None
    images: torch.Tensor | None = None  # the probe images (N, C, H, W) and labels (N,) on the CPU, for measures
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.cams.shape[0])

    @classmethod
    def empty(cls, feature_shape: tuple[int, int, int], num_classes: int, device: torch.device | str = "cpu") -> ProbeEvidence:
        d, h, w = feature_shape
        return cls(torch.zeros((0, d, h, w), device=device), torch.zeros((0, h, w), device=device),
                   torch.zeros((0, num_classes), device=device))


def probe_pass(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    cam: str = "gradcam",
    options: ProbePassOptions = ProbePassOptions(),
    reshape_transform: Callable | None = None,
    forward_fn: ForwardFn | None = None,
    stream: PrototypeStream | None = None,
) -> ProbeEvidence:
    """Run ``model`` over ``images`` in batches of ``options.batch_size`` (eval mode, modes, RNG and
    gradients left as they were) and gather the evidence. With ``stream``, each batch's features go
    into it (projected on their device) and are not kept. Raises ValueError for an empty probe."""
    if images.shape[0] == 0:
        raise ValueError("probe_pass needs at least one image")
    acts, cams, confs = [], [], []
    for batch in probe_batches(
        model, layer, images, labels, cam=cam, cam_target=options.cam_target, batch_size=options.batch_size,
        reshape_transform=reshape_transform, forward_fn=forward_fn, normalise=options.normalise_maps,
    ):
        if stream is not None:
            stream.add(batch.activations)
        else:
            acts.append(batch.activations.float())
        cams.append(batch.cams.float())
        confs.append(batch.confidences.float())
    return ProbeEvidence(None if stream is not None else torch.cat(acts), torch.cat(cams), torch.cat(confs), stream)


def run_fingerprint(images: torch.Tensor, labels: torch.Tensor, layer: TargetLayer, num_prototypes: int) -> dict[str, Any]:
    """What must stay the same for a run to go on: the probe set, the target layer, M and K."""
    return {
        "probe": probe_fingerprint(images, labels),
        "target_layer": layer.name,
        "num_classes": layer.num_classes,
        "num_prototypes": int(num_prototypes),
    }


def open_run(
    path: str | Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    layer: TargetLayer,
    *,
    num_prototypes: int,
    config: RunConfig | None = None,
    store_images: bool = True,
) -> I2XRun:
    """Start a new run directory for this probe and layer (the images are kept when they take at
    most ``MAX_STORED_PROBE_BYTES`` as float16). Raises I2XRunError when ``path`` holds a run."""
    array = images.numpy()
    keep = store_images and array.size * 2 <= MAX_STORED_PROBE_BYTES
    _, h, w = layer.feature_shape
    if config is None:
        config = RunConfig(layer.name, "gradcam", 1, ProbePassOptions(), PrototypeOptions(), ExplainOptions())
    return I2XRun.create(
        path, labels=labels.numpy(), class_names=class_names, feature_shape=(h, w), num_prototypes=num_prototypes,
        config=config, fingerprint=run_fingerprint(images, labels, layer, num_prototypes), images=array if keep else None,
    )


def resume_run(path: str | Path, fingerprint: dict[str, Any], num_checkpoints: int,
               prototypes: tuple[Prototypes, np.ndarray, int] | None = None) -> I2XRun:
    """Reopen a run to continue it from a Lightning checkpoint that covered ``num_checkpoints``
    records (later ones are dropped) with the prototypes current then. Raises ValueError when the
    run was recorded on another probe, layer, class count or K."""
    run = I2XRun.load(path)
    differs = [k for k in fingerprint if run.fingerprint.get(k) != fingerprint[k]]
    if differs:
        raise ValueError(
            f"cannot resume the I2X run in {run.path}: its {', '.join(differs)} differ from this callback's "
            "(a run needs the same probe set, target layer, class count and K throughout); "
            "pass a new run_dir to start a new run"
        )
    run.truncate(int(num_checkpoints), prototypes)
    return run


@dataclass
class Recorder:
    """Appends evidence to a run and keeps its prototypes and explanation current.

    num_prototypes: K. prototypes / explain: the fitting and analysis options.
    """

    num_prototypes: int
    prototypes: PrototypeOptions = field(default_factory=PrototypeOptions)
    explain: ExplainOptions = field(default_factory=ExplainOptions)

    def new_stream(self) -> PrototypeStream:
        """An empty ``PrototypeStream`` with these options, for ``probe_pass(stream=...)``."""
        o = self.prototypes
        return PrototypeStream(self.num_prototypes, n_components=o.pca_components, niter=o.kmeans_iters, seed=o.seed)

    def append(self, run: I2XRun, evidence: ProbeEvidence, *, epoch: int, global_step: int) -> int:
        """Store the checkpoint's maps and confidences, then refit the prototypes on its features
        (streamed; whole activations are streamed here in chunks), ids matched to the previous
        prototypes; returns the checkpoint index."""
        index = run.append_checkpoint(evidence.cams.cpu().numpy(), evidence.confidences.cpu().numpy(),
                                      epoch=epoch, global_step=global_step)
        stream = evidence.stream
        if stream is None:
            stream = self.new_stream()
            for s in range(0, evidence.activations.shape[0], 256):
                stream.add(evidence.activations[s : s + 256])
        previous = None if run.prototypes is None else run.assignment().reshape(-1)
        protos, assignment, distances = stream.fit(previous_assignment=previous)
        run.set_prototypes(protos, assignment, reference=index, distances=distances)
        return index

    def explain_run(self, run: I2XRun) -> Explanation:
        return run.explain(self.explain)

    def record(self, run: I2XRun, evidence: ProbeEvidence, *, epoch: int, global_step: int) -> Explanation:
        """``append`` then the explanation of the whole run so far."""
        self.append(run, evidence, epoch=epoch, global_step=global_step)
        return self.explain_run(run)
