"""Repair in the latent space, without human masks: the suspects' directions at the target layer.

- ``analysis.suspect_basis`` (pure NumPy, shared with the reliance measure's projection): for each
  targeted prototype, its centred directions, orthonormalised into one (d, r) basis. Computed
  here on features *recomputed at the target layer* of the model being repaired
  (``layer_features``) on training images, each location assigned to its prototype with the run's
  PCA projection and FAISS index: the basis lives in the full feature space the activations live
  in, not in the run's PCA space.
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
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .._model import ForwardFn, default_forward, evaluation_mode, preserved_rng, split_batch
from ..analysis import LatentBasis, suspect_basis
from ..perturb import project_component
from ..prototypes import Prototypes
from ._trainer import balanced_loss

__all__ = ["LatentBasis", "suspect_basis", "layer_features", "project_out", "Projection", "latent_penalty", "LatentModule",
           "parameters_after"]


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
        return project_component(a, v, self.reference)

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
