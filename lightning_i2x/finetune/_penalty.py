"""Explanation penalties: fine-tune a model away from regions flagged as shortcuts.

- ``input_gradient_penalty``: the "right reasons" term of Ross, Hughes and Doshi-Velez (2017),
  ``sum_{n,d} (A_nd * d/dx_nd sum_k log p_k(x_n))^2``: the squared input gradient of the summed
  log-probabilities of *all* classes (not only the true one) on the masked pixels ``A``. It needs
  a second backward pass (double backpropagation), so a training step costs about twice as much.
- ``gradcam_penalty``: the share of the GradCAM map at a target layer that falls inside the region,
  differentiable in the model's parameters: the same idea at the resolution the I2X prototypes
  live at, and one backward through the layers above the target only.
- ``balance_weight``: the weight that makes the penalty start at the size of the cross-entropy.

Both are plain functions of (model, images, labels, mask) for use inside a ``training_step``:
``loss = F.cross_entropy(logits, y) + lam * penalty``; with ``return_logits=True`` they give the
logits of the forward they ran, so the step needs no second forward. They leave the model's modes
and parameter ``.grad`` alone (gradients reach the parameters only through the returned tensor).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._model import ForwardFn

__all__ = ["input_gradient_penalty", "gradcam_penalty", "balance_weight"]


def _forward(model: torch.nn.Module, x: torch.Tensor, forward_fn: ForwardFn | None) -> torch.Tensor:
    logits = forward_fn(model, x) if forward_fn is not None else model(x)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise TypeError(f"the model must return (B, M) scores, got {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}")
    return logits


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise TypeError(f"images must be a (B, C, H, W) tensor, got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_image.mean()
    if reduction == "sum":
        return per_image.sum()
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def input_gradient_penalty(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    reduction: str = "mean",
    forward_fn: ForwardFn | None = None,
    return_logits: bool = False,
):
    """RRR's right-reasons term: per image ``sum over masked pixels of (d sum_c log p_c / dx)^2``,
    averaged over the batch (``reduction="mean"``; ``"sum"`` is the paper's batch sum, ``"none"``
    per image). ``mask``: (B, H, W) or (B, C, H, W), bool or float weights. ``y`` is not used by
    the term (it sums over all classes) and is accepted for a signature shared with
    ``gradcam_penalty``. Differentiable in the parameters (``create_graph``)."""
    _check_images(x)
    m = torch.as_tensor(mask, device=x.device)
    if m.ndim == 3:
        m = m.unsqueeze(1)
    if m.ndim != 4 or m.shape[0] != x.shape[0] or m.shape[-2:] != x.shape[-2:] or m.shape[1] not in (1, x.shape[1]):
        raise ValueError(f"mask must be (B, H, W) or (B, C, H, W) matching images {tuple(x.shape)}, got {tuple(m.shape)}")
    xi = x.detach().requires_grad_(True)
    logits = _forward(model, xi, forward_fn)
    logp = F.log_softmax(logits.float(), dim=1)
    (g,) = torch.autograd.grad(logp.sum(), xi, create_graph=True)
    per_image = ((g * m.to(g.dtype)) ** 2).flatten(1).sum(1)
    out = _reduce(per_image, reduction)
    return (out, logits) if return_logits else out


def _resolve(model: torch.nn.Module, layer: str | torch.nn.Module) -> torch.nn.Module:
    if isinstance(layer, torch.nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError as e:
        raise ValueError(f"target_layer {layer!r} is not a submodule of the model") from e


def gradcam_penalty(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    target_layer: str | torch.nn.Module,
    *,
    reduction: str = "mean",
    eps: float = 1e-8,
    forward_fn: ForwardFn | None = None,
    return_logits: bool = False,
):
    """Share of the true class's GradCAM mass inside the region, per image in [0, 1], averaged.

    GradCAM at ``target_layer``: ``relu(sum_d alpha_d A_d)`` with ``alpha_d`` the spatial mean of
    d score_y / d A_d; here the gradient is kept in the graph (``create_graph``), so the penalty
    moves the weights that make the region salient. ``mask``: (B, h, w) at the layer's resolution
    or (B, H, W) at the images' (average-pooled down to the layer's), bool or float."""
    _check_images(x)
    module = _resolve(model, target_layer)
    y = torch.as_tensor(y, device=x.device).reshape(-1).long()
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        store["a"] = out

    handle = module.register_forward_hook(hook)
    try:
        logits = _forward(model, x, forward_fn)
    finally:
        handle.remove()
    a = store.get("a")
    if not isinstance(a, torch.Tensor) or a.ndim != 4:
        raise ValueError(f"target_layer must output (B, D, h, w) maps, got {type(a).__name__} {tuple(getattr(a, 'shape', ()))}")
    score = logits.gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(score, a, create_graph=True)
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))  # (B, h, w)
    m = torch.as_tensor(mask, device=x.device)
    if m.ndim != 3 or m.shape[0] != x.shape[0]:
        raise ValueError(f"mask must be (B, h, w) or (B, H, W) with B={x.shape[0]}, got {tuple(m.shape)}")
    m = m.to(cam.dtype)
    if m.shape[-2:] != cam.shape[-2:]:
        if m.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"mask of shape {tuple(m.shape)} is neither at the layer's {tuple(cam.shape[-2:])} nor the images' {tuple(x.shape[-2:])} resolution")
        m = F.adaptive_avg_pool2d(m.unsqueeze(1), cam.shape[-2:]).squeeze(1)
    per_image = (cam * m).flatten(1).sum(1) / (cam.flatten(1).sum(1) + eps)
    out = _reduce(per_image, reduction)
    return (out, logits) if return_logits else out


def balance_weight(ce0: float | torch.Tensor, pen0: float | torch.Tensor, ratio: float = 1.0) -> float:
    """The penalty weight ``lam`` with ``lam * pen0 = ratio * ce0``: both loss terms start alike
    (measure ``ce0`` and ``pen0`` on the first batch, or averaged over a few). Raises ValueError
    when the penalty is zero or not finite (nothing to balance: the region is already ignored)."""
    ce = float(ce0.detach() if isinstance(ce0, torch.Tensor) else ce0)
    pen = float(pen0.detach() if isinstance(pen0, torch.Tensor) else pen0)
    if not (math.isfinite(ce) and math.isfinite(pen)) or ce < 0 or pen <= 0 or ratio <= 0:
        raise ValueError(f"balance_weight needs a finite ce0 >= 0, pen0 > 0 and ratio > 0, got {ce}, {pen}, {ratio}")
    return ratio * ce / pen
