"""The record pipeline, with no Trainer in it: probe -> evidence -> run -> prototypes -> explanation.

``probe_pass`` runs a model over (a share of) the probe set and returns its ``ProbeEvidence``;
``Recorder.record`` appends that evidence to a run as a checkpoint, refits the prototypes on it and
returns the current explanation. ``open_run`` starts the run directory, ``resume_run`` continues it. The callback
(``lightning_i2x.callbacks``), the benchmarks and scripts all go through these same functions.

Example::

    >>> import torch, tempfile
    >>> from torch import nn
    >>> from lightning_i2x.saliency import resolve_target_layer
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
from ..channels import ChannelStream, LinearHead, channel_head
from ..options import ExplainOptions, ProbePassOptions, PrototypeOptions, RunConfig
from ..prototypes import Prototypes, PrototypeStream
from ..saliency import TargetLayer, probe_batches
from ..store import I2XRun
from ._probe import probe_fingerprint

__all__ = ["ProbeEvidence", "probe_pass", "Recorder", "gather_evidence", "probe_share", "run_state", "open_or_resume", "open_run", "resume_run", "run_fingerprint", "MAX_STORED_PROBE_BYTES"]

MAX_STORED_PROBE_BYTES = 64 * 2**20
"""Probe images are kept in the run (float16) only up to this size."""


@dataclass(frozen=True)
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
    pooled: torch.Tensor | None = None  # (N, d) the features averaged over the locations, stored with each record (x-features)

    def __len__(self) -> int:
        return int(self.cams.shape[0])

    def on_host(self, images: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> ProbeEvidence:
        """A CPU copy with the probe's images and labels, for the background worker: the training
        thread may go on changing the model's device buffers meanwhile."""
        copy = lambda t: None if t is None else t.detach().to("cpu", copy=True)  # noqa: E731
        return ProbeEvidence(copy(self.activations), copy(self.cams), copy(self.confidences), self.stream, images, labels, copy(self.pooled))

    def pooled_features(self) -> torch.Tensor | None:
        """(N, d) pooled features: kept from the pass, else averaged from whole activations; None with neither."""
        if self.pooled is not None:
            return self.pooled
        return None if self.activations is None else self.activations.float().mean(dim=(2, 3))

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
    acts, cams, confs, pooled = [], [], [], []
    for batch in probe_batches(
        model, layer, images, labels, cam=cam, cam_target=options.cam_target, batch_size=options.batch_size,
        reshape_transform=reshape_transform, forward_fn=forward_fn, normalise=options.normalise_maps,
        igos=options.igos.igos_kwargs(),
    ):
        pooled.append(batch.activations.float().mean(dim=(2, 3)))
        if stream is not None:
            stream.add(batch.activations)
        else:
            acts.append(batch.activations.float())
        cams.append(batch.cams.float())
        confs.append(batch.confidences.float())
    return ProbeEvidence(None if stream is not None else torch.cat(acts), torch.cat(cams), torch.cat(confs), stream, pooled=torch.cat(pooled))


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
    head: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    """The model's avg-pool + linear head (weight (M, D), bias (M,)) as read before the probe pass:
    what the channel source (``PrototypeOptions(source="channels")``) carries over; None for k-means."""
    latest: ProbeEvidence | None = field(default=None, init=False, repr=False)
    """The last appended record's float32 maps and confidences (on the CPU; no features), for the
    end-of-fit measures."""
    _live_head: LinearHead | None = field(default=None, init=False, repr=False)
    """The model's head module found by ``bind`` (a live reference: dropped on pickling)."""

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for spawn strategies: the copy holds no model; ``bind`` it to its own in setup."""
        return {**self.__dict__, "_live_head": None}

    def bind(self, model: torch.nn.Module, layer: TargetLayer, images: torch.Tensor, labels: torch.Tensor,
             forward_fn: ForwardFn | None = None) -> None:
        """Before training, for the channel source: find and check the model's avg-pool + linear head
        (``channels.channel_head``; ValueError / ``HeadMismatchError`` saying what to change) and keep
        it, so ``start_pass`` reads its weights as they are at each record. The k-means source needs
        no head: then none is kept."""
        self._live_head = None
        if self.prototypes.source == "channels":
            self._live_head = channel_head(model, layer, images, labels, self.num_prototypes, forward_fn)

    def start_pass(self, *, streaming: bool) -> PrototypeStream | ChannelStream | None:
        """Called before each probe pass: the bound head's current weights become ``head`` (what this
        record carries over, read before training changes them), then a ``new_stream`` for
        ``probe_pass(stream=...)`` when the features stream (one process), else None."""
        if self._live_head is not None:
            self.head = self._live_head.read()
        return self.new_stream() if streaming else None

    def new_stream(self) -> PrototypeStream | ChannelStream:
        """An empty ``PrototypeStream`` with these options (a ``ChannelStream`` for the channel
        source, holding the head read last), for ``probe_pass(stream=...)``."""
        o = self.prototypes
        if o.source == "channels":
            if self.head is None:
                raise ValueError("the channel prototype source needs the model's head: Recorder.bind(model, ...) before training, then "
                                 "start_pass() before each probe pass (I2XCallback does both), or set Recorder.head = LinearHead.read()")
            return ChannelStream(self.num_prototypes, self.head, epochs=o.epic_epochs, seed=o.seed)
        return PrototypeStream(self.num_prototypes, n_components=o.pca_components, niter=o.kmeans_iters, seed=o.seed)

    def append(self, run: I2XRun, evidence: ProbeEvidence, *, epoch: int, global_step: int) -> int:
        """Store the checkpoint's maps, confidences and pooled features, then refit the prototypes on its features
        (streamed; whole activations are streamed here in chunks), ids matched to the previous
        prototypes; returns the checkpoint index."""
        pooled = evidence.pooled_features()
        index = run.append_checkpoint(evidence.cams.cpu().numpy(), evidence.confidences.cpu().numpy(),
                                      epoch=epoch, global_step=global_step, pooled=None if pooled is None else pooled.cpu().numpy())
        stream = self.new_stream() if evidence.stream is None else evidence.stream
        if evidence.activations is not None:  # whole activations (gathered, or a caller's pass): streamed here
            for s in range(0, evidence.activations.shape[0], 256):
                stream.add(evidence.activations[s : s + 256])
        previous = None if run.prototypes is None else run.assignment().reshape(-1)
        protos, assignment, distances = stream.fit(previous_assignment=previous)
        run.set_prototypes(protos, assignment, reference=index, distances=distances)
        if isinstance(stream, ChannelStream):  # what the channel views draw: the unmixing, the carried-over head, the ids' channels
            epic = stream.epic
            run.save_attachment("channel_source", arrays={
                "channels": stream.channels, "rotation": epic.rotation.numpy(), "weight": epic.weight.numpy(), "bias": epic.bias.numpy(),
                "purity_before": np.float64(epic.purity_before), "purity_after": np.float64(epic.purity_after)}, checkpoint=index)
        self.latest = ProbeEvidence(None, evidence.cams.detach().float().cpu(), evidence.confidences.detach().float().cpu(), None,
                                    evidence.images, evidence.labels)
        return index

    def explain_run(self, run: I2XRun) -> Explanation:
        return run.explain(self.explain)

    def record(self, run: I2XRun, evidence: ProbeEvidence, *, epoch: int, global_step: int) -> Explanation:
        """``append`` then the explanation of the whole run so far."""
        self.append(run, evidence, epoch=epoch, global_step=global_step)
        return self.explain_run(run)


def run_state(run: I2XRun | None) -> dict[str, Any]:
    """What a resumed fit needs to continue ``run``: where it is, how many records the Lightning
    checkpoint covers, and the prototypes current at that moment (tensors, as Lightning stores them)."""
    state: dict[str, Any] = {
        "run_dir": None if run is None else str(run.path),
        "num_checkpoints": 0 if run is None else run.num_checkpoints,
        "fingerprint": None if run is None else run.fingerprint,
    }
    if run is not None and run.prototypes is not None:
        state["prototypes"] = {k: torch.from_numpy(np.asarray(v)) for k, v in run.prototypes.to_arrays().items()}
        state["assignment"] = torch.from_numpy(run.assignment().astype(np.int32))
        state["reference"] = run.reference
    return state


def open_or_resume(path: str | Path, state: dict[str, Any] | None, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                   layer: TargetLayer, *, num_prototypes: int, config: RunConfig, store_images: bool = True) -> I2XRun:
    """The run of this fit: the one ``state`` (``run_state`` of a Lightning checkpoint) names when it
    still exists, truncated to the records that checkpoint covers, else a new run at ``path``."""
    if state and state.get("run_dir") and (Path(state["run_dir"]) / "manifest.json").exists():
        prototypes = None
        if "prototypes" in state:
            arrays = {k: v.numpy() for k, v in state["prototypes"].items()}
            prototypes = (Prototypes.from_arrays(arrays), state["assignment"].numpy(), int(state["reference"]))
        return resume_run(state["run_dir"], run_fingerprint(images, labels, layer, num_prototypes), int(state["num_checkpoints"]), prototypes)
    return open_run(path, images, labels, class_names, layer, num_prototypes=num_prototypes, config=config, store_images=store_images)


def gather_evidence(all_gather: Callable[[torch.Tensor], torch.Tensor], local: ProbeEvidence | None, *, rank: int, world: int,
                    num_probe: int, feature_shape: tuple[int, int, int], num_classes: int,
                    device: torch.device | str) -> tuple[ProbeEvidence | None, list[int]]:
    """Under DDP, each rank's share of the probe (rank r holds ``[r * share, (r + 1) * share)``,
    ``share = ceil(N / world)``; ``local`` None where its pass failed) gathered into the whole probe's
    evidence in probe order, and the ranks whose pass failed. Every rank calls ``all_gather`` the
    same number of times with the same shapes, failed or not, so none is left waiting; the evidence
    is None when any rank failed."""
    part = probe_share(rank, world, num_probe)
    share, lo, hi = -(-num_probe // world), part.start, part.stop
    d, h, w = feature_shape
    ok = torch.tensor([local is not None], dtype=torch.float32, device=device)
    padded = [torch.zeros(shape, dtype=torch.float32, device=device) for shape in ((share, d, h, w), (share, h, w), (share, num_classes))]
    if local is not None and hi > lo:
        for buffer, part in zip(padded, (local.activations, local.cams, local.confidences)):
            buffer[: hi - lo] = part
    gathered = [all_gather(t) for t in (ok, *padded)]
    failed = (gathered[0].reshape(-1) == 0).nonzero().reshape(-1).tolist()
    if failed:
        return None, failed
    return ProbeEvidence(*(t.reshape(world * share, *t.shape[2:])[:num_probe] for t in gathered[1:])), []


def probe_share(rank: int, world: int, num_probe: int) -> slice:
    """The contiguous share of the probe that ``rank`` of ``world`` processes runs."""
    share = -(-num_probe // world)
    return slice(min(rank * share, num_probe), min((rank + 1) * share, num_probe))
