"""Repair in the latent space, without human masks: the suspects' directions at the target layer.

- ``suspect_basis``: for each targeted prototype, the directions from the other locations' mean
  feature to that prototype's locations (its centroid minus the rest's mean first, then the next
  singular directions of those differences: a swatch drawn in ten shades spans several); all of
  them orthonormalised into one (d, r) basis. Computed on features *recomputed at the target
  layer* of the model being repaired (``layer_features``) on training images, each location
  assigned to its prototype with the run's PCA projection and FAISS index: the basis lives in the
  full feature space the activations live in, not in the run's PCA space.
- ``project_out``: P-ClArC, the zero-training baseline: a removable forward hook at the layer that
  sets every location's component in the basis to that of the reference point (the rest's mean),
  so the model no longer sees the suspects' directions at inference.
- ``latent_penalty`` (RR-ClArC): the squared projection onto the basis of the spatially averaged
  gradient, at the layer, of a randomly signed sum of the logits; ``LatentModule`` fine-tunes with
  ``cross_entropy + weight * latent_penalty``, the weight balanced against the cross-entropy as
  the other penalties are (``balance_weight``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .._model import ForwardFn, default_forward, evaluation_mode, preserved_rng, split_batch
from ..prototypes import Prototypes
from ._trainer import balanced_loss

__all__ = ["LatentBasis", "suspect_basis", "layer_features", "project_out", "Projection", "latent_penalty", "LatentModule",
           "parameters_after"]


@dataclass
class LatentBasis:
    """The suspects' centred subspace at the target layer.

    basis: (d, r) orthonormal columns; reference: (d,) the mean feature of the locations not
    assigned to a targeted prototype (where ``project_out`` puts the removed component);
    prototypes: the targeted ids; directions: {prototype: directions it contributed};
    locations: {prototype: locations of the sample assigned to it}; num_locations: all locations
    sampled."""

    basis: np.ndarray
    reference: np.ndarray
    prototypes: tuple[int, ...]
    directions: dict[int, int] = field(default_factory=dict)
    locations: dict[int, int] = field(default_factory=dict)
    num_locations: int = 0

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"basis": self.basis.astype(np.float32), "reference": self.reference.astype(np.float32),
                "prototypes": np.asarray(self.prototypes, dtype=np.int64)}


def suspect_basis(features: np.ndarray, assignment: np.ndarray, prototypes: Sequence[int], *, directions: int = 3,
                  min_share: float = 0.05, tol: float = 1e-6) -> LatentBasis:
    """The orthonormal basis of the targeted prototypes' directions in feature space.

    Args:
        features: (L, d) feature vectors of sampled locations at the target layer.
        assignment: (L,) the prototype of each location.
        prototypes: the targeted prototype ids.
        directions: at most this many directions per prototype: the top right singular vectors of
            (its locations' features minus the other locations' mean), whose first is about the
            centroid minus the rest's mean.
        min_share: a further direction is kept only when its singular value squared is at least
            this share of the prototype's total (the first is always kept).
        tol: directions left with less than this norm after orthogonalisation are dropped.

    Returns:
        A ``LatentBasis`` (rank 0 when no location is assigned to a targeted prototype, or every
        location is).
    """
    x = np.asarray(features, dtype=np.float64)
    a = np.asarray(assignment).reshape(-1)
    if x.ndim != 2 or x.shape[0] != a.shape[0]:
        raise ValueError(f"features must be (L, d) with one assignment per row, got {x.shape} and {a.shape}")
    if directions < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    protos = tuple(int(k) for k in prototypes)
    d = x.shape[1]
    target = np.isin(a, np.asarray(protos, dtype=a.dtype)) if protos else np.zeros(a.shape, bool)
    rest = ~target
    reference = x[rest].mean(axis=0) if rest.any() else np.zeros(d)
    cols, counts, dirs = [], {}, {}
    for k in protos:
        own = a == k
        counts[k] = int(own.sum())
        dirs[k] = 0
        if not own.any() or not rest.any():
            continue
        diff = x[own] - reference
        _, s, vt = np.linalg.svd(diff, full_matrices=False)
        total = float((s**2).sum())
        if total <= 0:
            continue
        # orient each singular vector along the prototype's mean difference (a sign convention only)
        mean_diff = diff.mean(axis=0)
        for j in range(min(directions, vt.shape[0])):
            if j > 0 and s[j] ** 2 < min_share * total:
                break
            v = vt[j] * (1.0 if float(vt[j] @ mean_diff) >= 0 else -1.0)
            cols.append(v)
            dirs[k] += 1
    basis = np.zeros((d, 0))
    if cols:
        kept = []
        for v in cols:  # Gram-Schmidt in the order given: each prototype's main direction first
            w = v - sum((q @ v) * q for q in kept) if kept else v.copy()
            norm = float(np.linalg.norm(w))
            if norm > tol:
                kept.append(w / norm)
        if kept:
            basis = np.stack(kept, axis=1)
    return LatentBasis(basis=basis.astype(np.float32), reference=reference.astype(np.float32), prototypes=protos,
                       directions=dirs, locations=counts, num_locations=int(a.size))


def _capture(layer: torch.nn.Module, differentiable: bool = False) -> tuple[dict[str, torch.Tensor], Any]:
    """A hook keeping the layer's output; ``differentiable``: an output outside the graph (every
    parameter before the layer frozen) is replaced by a leaf that requires grad, so the gradient
    at the layer can still be taken (nothing before it needs one)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        if differentiable and isinstance(out, torch.Tensor) and not out.requires_grad and torch.is_grad_enabled():
            out = out.detach().requires_grad_(True)
        store["a"] = out
        return out

    return store, layer.register_forward_hook(hook)


def _maps(a: Any, what: str) -> torch.Tensor:
    if not isinstance(a, torch.Tensor) or a.ndim != 4:
        raise ValueError(f"{what} needs a target layer with (B, D, h, w) maps, got {type(a).__name__} {tuple(getattr(a, 'shape', ()))}")
    return a


@torch.no_grad()
def layer_features(model: torch.nn.Module, layer: torch.nn.Module, dataset: Dataset, indices: Sequence[int], *,
                   batch_size: int = 256, collate_fn=None, device: torch.device | None = None,
                   forward_fn: ForwardFn | None = None) -> np.ndarray:
    """(n, h, w, d) float32 features of ``dataset[indices]`` at ``layer`` (eval mode, no grad, RNG untouched)."""
    forward = forward_fn or default_forward
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    loader = DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    out = []
    store, handle = _capture(layer)
    try:
        with preserved_rng(), evaluation_mode(model):
            for batch in loader:
                x, _ = split_batch(batch, "the training DataLoader")
                forward(model, x.to(device))
                out.append(_maps(store.pop("a"), "mode='latent'").permute(0, 2, 3, 1).float().cpu().numpy())
    finally:
        handle.remove()
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 0), np.float32)


def basis_from_model(model: torch.nn.Module, layer: torch.nn.Module, dataset: Dataset, indices: np.ndarray, prototypes: Prototypes,
                     targeted: Sequence[int], *, directions: int, batch_size: int = 256, collate_fn=None,
                     device: torch.device | None = None, forward_fn: ForwardFn | None = None) -> LatentBasis:
    """``layer_features`` of the images, each location assigned with the run's prototypes, then ``suspect_basis``."""
    feats = layer_features(model, layer, dataset, indices, batch_size=batch_size, collate_fn=collate_fn, device=device,
                           forward_fn=forward_fn)
    flat = feats.reshape(-1, feats.shape[-1]) if feats.size else np.zeros((0, prototypes.feature_dim), np.float32)
    assignment = prototypes.assign(flat) if flat.shape[0] else np.zeros(0, np.int64)
    return suspect_basis(flat, assignment, targeted, directions=directions)


def _as_basis(basis: LatentBasis | np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(basis, LatentBasis):
        reference = basis.reference if reference is None else reference
        basis = basis.basis
    v = torch.as_tensor(np.asarray(basis) if not isinstance(basis, torch.Tensor) else basis).detach().float()
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise ValueError(f"basis must be (d, r), got {tuple(v.shape)}")
    q, _ = torch.linalg.qr(v) if v.shape[1] else (v, None)  # orthonormal columns, whatever was passed
    z = None if reference is None else torch.as_tensor(np.asarray(reference) if not isinstance(reference, torch.Tensor)
                                                         else reference).detach().float().reshape(-1)
    if z is not None and z.shape[0] != q.shape[0]:
        raise ValueError(f"reference has {z.shape[0]} values, the basis {q.shape[0]} rows")
    return q, z


class Projection:
    """The handle of ``project_out``: ``.remove()`` (or leaving the ``with`` block) puts the model back."""

    def __init__(self, layer: torch.nn.Module, basis: torch.Tensor, reference: torch.Tensor | None):
        self.layer, self.basis, self.reference = layer, basis, reference
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, _m, _inp, out):
        a = _maps(out, "project_out")
        v = self.basis.to(device=a.device, dtype=a.dtype)
        if v.shape[0] != a.shape[1]:
            raise ValueError(f"the basis has {v.shape[0]} rows, the layer's maps {a.shape[1]} channels")
        centred = a if self.reference is None else a - self.reference.to(device=a.device, dtype=a.dtype).view(1, -1, 1, 1)
        coeff = torch.einsum("bdhw,dr->brhw", centred, v)
        return a - torch.einsum("brhw,dr->bdhw", coeff, v)

    @property
    def active(self) -> bool:
        return self._handle is not None

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> Projection:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def project_out(model: torch.nn.Module, layer: str | torch.nn.Module, basis: LatentBasis | np.ndarray | torch.Tensor, *,
                reference: np.ndarray | torch.Tensor | None = None) -> Projection:
    """P-ClArC: project the basis out of the activations at ``layer`` at inference (no training).

    Every location's feature ``a`` becomes ``a - V V^T (a - z)``: its component in the subspace is
    set to that of the reference ``z`` (a ``LatentBasis``'s reference, the other locations' mean;
    with none given, 0: the component is removed). The weights are untouched; a forward hook does it.

    Args:
        model: the classifier (not changed).
        layer: the target layer, a submodule or its name; it must give (B, D, h, w) maps.
        basis: a ``LatentBasis`` or a (d, r) array (orthonormalised here).
        reference: overrides the ``LatentBasis``'s reference point.

    Returns:
        A ``Projection``: ``.remove()`` it, or use it as a context manager, to get the model back exactly.
    """
    module = layer if isinstance(layer, torch.nn.Module) else model.get_submodule(layer)
    v, z = _as_basis(basis, reference)
    return Projection(module, v, z)


def latent_penalty(model: torch.nn.Module, x: torch.Tensor, layer: torch.nn.Module, basis: torch.Tensor, *,
                   forward_fn: ForwardFn | None = None, generator: torch.Generator | None = None,
                   return_logits: bool = False):
    """RR-ClArC's term: mean over the batch of ``|| V^T mean_hw d(sum_c s_c logit_c)/da ||^2``,
    ``s`` a random sign per image and class, ``a`` the layer's maps, ``V`` the (d, r) basis.
    Differentiable in the parameters after the layer (``create_graph``)."""
    store, handle = _capture(layer, differentiable=True)
    try:
        logits = (forward_fn or default_forward)(model, x)
    finally:
        handle.remove()
    a = _maps(store.get("a"), "mode='latent'")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise TypeError(f"mode='latent' needs a classifier returning (B, M) scores, got {tuple(getattr(logits, 'shape', ()))}")
    signs = torch.randint(0, 2, logits.shape, generator=generator, device="cpu").to(logits.device, logits.dtype) * 2 - 1
    (g,) = torch.autograd.grad((signs * logits).sum(), a, create_graph=True)
    proj = g.float().mean(dim=(2, 3)) @ basis.to(g.device, torch.float32)  # (B, r)
    pen = (proj**2).sum(dim=1).mean()
    return (pen, logits) if return_logits else pen


def parameters_after(model: torch.nn.Module, layer: torch.nn.Module, sample: torch.Tensor,
                     forward_fn: ForwardFn | None = None) -> list[torch.nn.Parameter]:
    """The parameters that do not reach ``layer``'s output (those after it), found by autograd on ``sample``."""
    params = [p for p in model.parameters() if p.requires_grad]
    store, handle = _capture(layer)
    try:
        with preserved_rng(), evaluation_mode(model), torch.enable_grad():
            (forward_fn or default_forward)(model, sample)
            a = _maps(store.get("a"), "mode='latent'")
            grads = torch.autograd.grad(a.float().sum(), params, allow_unused=True)
    finally:
        handle.remove()
    return [p for p, g in zip(params, grads) if g is None]


@contextlib.contextmanager
def frozen_except(model: torch.nn.Module, trainable: Sequence[torch.nn.Parameter] | None) -> Iterator[None]:
    """Only ``trainable`` get gradients inside the block (None: all); ``requires_grad`` restored after."""
    if trainable is None:
        yield
        return
    keep = {id(p) for p in trainable}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            if id(p) not in keep:
                p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


class LatentModule(pl.LightningModule):
    """The user's classifier fine-tuned with ``cross_entropy + weight * latent_penalty`` in the
    schedule's "curated" epochs (plain cross-entropy in its "full" ones), ``mode="latent"``. Same
    assumptions as ``PenalisedModule``: (B, M) scores, cross-entropy on (x, y) batches, the
    module's own ``configure_optimizers``. The weight is ``balance_weight`` on the first batch."""

    def __init__(self, module: pl.LightningModule, layer: torch.nn.Module, basis: np.ndarray, ratio: float,
                 schedule: Sequence[str], seed: int, forward_fn: ForwardFn | None):
        super().__init__()
        self.module = module
        self.__dict__["layer"] = layer  # a submodule of ``module``: not registered twice
        self.register_buffer("basis", torch.as_tensor(np.asarray(basis), dtype=torch.float32), persistent=False)
        self.ratio, self.schedule, self.forward_fn = float(ratio), tuple(schedule), forward_fn
        self.generator = torch.Generator().manual_seed(int(seed) + 17)
        self.weight: float | None = None

    def forward(self, x):
        return (self.forward_fn or default_forward)(self.module, x)

    def training_step(self, batch, _idx):
        x, y = split_batch(batch, "the training DataLoader")
        if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point():
            raise TypeError("mode='latent' trains with the cross-entropy on (image, integer label) samples; "
                            f"got labels {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
        phase = self.schedule[min(self.current_epoch, len(self.schedule) - 1)]
        if phase == "curated":
            pen, logits = latent_penalty(self.module, x, self.layer, self.basis, forward_fn=self.forward_fn,
                                         generator=self.generator, return_logits=True)
        else:
            logits, pen = self(x), None
        return balanced_loss(self, logits, y, pen)

    def configure_optimizers(self):
        self.module._trainer = self._trainer
        return self.module.configure_optimizers()
