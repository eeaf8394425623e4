"""I-GOS and iGOS++ saliency: a low-resolution mask optimised so that the pixels it marks carry the
model's decision, with integrated gradients instead of the plain gradient.

- I-GOS (Qi, Khorram, Li, AAAI 2020): one deletion mask ``M`` (1 = keep the image, 0 = replace by
  the blurred baseline), upsampled bilinearly to the image. Its loss is the target-class softmax
  score averaged over ``ig_iter`` points of the straight path from the baseline to the masked image
  (the gradient of that average is the integrated gradient of the mask), plus
  ``L1 * mean|1 - M|`` (delete few pixels) and ``L2 * TV(M)`` (in smooth blobs).
- iGOS++ (Khorram, Lawson, Li, ACM CHIL 2021): a deletion mask and an insertion mask optimised
  together. Their product must remove the decision from the image (deletion) and restore it onto
  the baseline (insertion); each mask alone does one of the two. The TV term becomes bilateral:
  mask edges are cheap where the image has edges.

Names and defaults follow the authors' code (github.com/khorrams/IGOS_pp): ``size`` (mask side),
``iterations`` 15, ``ig_iter`` 20, ``L1`` 1, ``L2`` 20, ``alpha`` 1000 (the first step of a
backtracking Armijo line search, ``beta`` 1e-4, ``decay`` 0.2, floor 1e-5), ``opt`` "LS" or "NAG",
Gaussian noise of sd ``noise`` 0.2 on every path point, bilateral ``tv_sigma`` 0.01, masks
initialised to 1. The baseline is a heavily blurred copy of the image (their sigma of 50 px at
224 px, scaled to the image). Deviations, for batching and determinism: the noise comes from a
private generator (``seed``), one draw per iteration shared by the gradient and every line-search
trial (common random numbers: the Armijo test compares like with like); the line search tests
the same loss the gradient is taken of (the authors' code drops iGOS++'s halving there); all
images of a chunk (``batch_size`` images, ``ig_iter`` path points each) go through the model in one
forward.

The saliency returned is ``1 - M`` (I-GOS) or ``1 - M_del * M_ins`` (iGOS++): in [0, 1], higher =
more important, at the mask's resolution.

Cost per image: I-GOS ``iterations`` x (one forward + backward of ``ig_iter`` path points, plus
one forward of ``ig_iter`` points per line-search trial, at least 2 trials); iGOS++ four times that
(four path integrals). With the defaults: I-GOS >= 900 forwards + 300 backwards, iGOS++ >= 3600
forwards + 1200 backwards, i.e. hundreds to thousands of probe passes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .._model import ForwardFn, default_forward, evaluation_mode, model_device, preserved_rng
from ..perturb import default_blur_sigma, fill_values, hiding_sigma
from ._gradcam import ProbeBatch, grad_enabled_full_precision, model_input, normalise_maps
from ._upsample import upsample_maps

__all__ = ["IGOS_METHODS", "igos_maps", "igos_probe_batch", "default_mask_side", "smoothness_weight", "AUTHORS_BLUR_FRACTION",
           "AUTHORS_MASK_SIDE", "NOISE_RANGE_REFERENCE"]

IGOS_METHODS: tuple[str, ...] = ("igos", "igos++")



def _upscale(masks: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) -> (B, 1, H, W) with the metric's upsampler (``upsample_maps``)."""
    return upsample_maps(masks, image_size)


AUTHORS_MASK_SIDE = 28
"""The authors' mask side (``--size 28`` at 224 px), where their ``L2 = 20`` was tuned."""

AUTHORS_BLUR_FRACTION = 0.0646
"""The sd of the authors' baseline blur kernel as a fraction of the image side: a 51 x 51 kernel
with sigma 50 at 224 px is truncated to nearly a box of 51 px, whose sd is 14.47 px (51 taps of a
Gaussian of sigma 50; a box's would be 14.72); a Gaussian of that sd has about the same reach.
This package's 0.2 baseline (0.22 of the side) was about 3.5 times stronger."""

NOISE_RANGE_REFERENCE = 4.5
"""The value range of ImageNet-normalised inputs ((1 - 0) / 0.225), the scale the authors' noise sd
of 0.2 was set on."""


def default_mask_side(feature_side: int, image_side: int) -> int:
    """The mask side the probe pass optimises at: four times the target layer's map side, at most
    the image side. The authors optimise 28 x 28 masks for networks whose last map is 7 x 7 at 224
    px; on small images their ratio to the image (1/8 of the side) would be coarser than the
    network's own map, so the ratio to the map is kept instead (7 x 7 on MNIST -> 28 x 28)."""
    return int(min(image_side, 4 * feature_side))


def smoothness_weight(L2: float, mask_size: tuple[int, int]) -> float:
    """``L2`` rescaled to the mask's resolution: the total variation of the same image region is a
    mean over cell differences whose non-zero ones lie on the region's boundary, so it scales as
    1 / side; the weight is multiplied by side / 28 to keep its cost against the score terms where
    the authors tuned it (a 7 x 7 mask: 20 -> 5)."""
    side = 0.5 * (mask_size[0] + mask_size[1])
    return float(L2) * side / AUTHORS_MASK_SIDE


def _tv(masks: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """(B,) mean |vertical difference|^beta + mean |horizontal difference|^beta of (B, 1, h, w) masks."""
    m = masks[:, 0]
    a = (m[:, :-1, :] - m[:, 1:, :]).abs().pow(beta).flatten(1)
    b = (m[:, :, :-1] - m[:, :, 1:]).abs().pow(beta).flatten(1)
    a = a.mean(1) if a.shape[1] else m.new_zeros(m.shape[0])
    b = b.mean(1) if b.shape[1] else m.new_zeros(m.shape[0])
    return a + b


def _bilateral_tv(images: torch.Tensor, masks: torch.Tensor, up: torch.Tensor, sigma: float, beta: float = 2.0) -> torch.Tensor:
    """iGOS++'s bilateral TV: half of (the mask's TV + the upsampled mask's TV in image space, each
    difference weighted by exp(-(channel-mean image difference)^2 / sigma))."""
    dv = (images[:, :, :-1, :] - images[:, :, 1:, :]).mean(1)
    dh = (images[:, :, :, :-1] - images[:, :, :, 1:]).mean(1)
    u = up[:, 0]
    bil_a = (torch.exp(-dv.pow(2) / sigma) * (u[:, :-1, :] - u[:, 1:, :]).abs().pow(beta)).flatten(1).mean(1)
    bil_b = (torch.exp(-dh.pow(2) / sigma) * (u[:, :, :-1] - u[:, :, 1:]).abs().pow(beta)).flatten(1).mean(1)
    return 0.5 * (_tv(masks, beta) + bil_a + bil_b)


class _Objective:
    """The loss of a chunk of images as a function of its masks, with one noise draw fixed."""

    def __init__(self, model, forward_fn, images, baseline, targets, ig_iter, method, L1, L2, tv_sigma, noise_sd, gen):
        self.model, self.forward_fn = model, forward_fn
        self.images, self.baseline, self.targets = images, baseline, targets
        self.k = ig_iter
        self.method, self.L1, self.L2, self.tv_sigma = method, L1, L2, tv_sigma
        self.noise_sd, self.gen = noise_sd, gen
        self.size = tuple(images.shape[-2:])
        self.intervals = torch.linspace(1.0 / ig_iter, 1.0, ig_iter, device=images.device, dtype=images.dtype).view(1, -1, 1, 1, 1)
        self.noise = None

    def redraw(self, n_paths: int) -> None:
        b, c, h, w = self.images.shape
        sd = self.noise_sd  # a number, or (b,) one per image
        if torch.is_tensor(sd) or sd > 0:
            z = torch.randn((n_paths, b, self.k, c, h, w), generator=self.gen, device=self.images.device, dtype=self.images.dtype)
            self.noise = z * (sd.view(1, -1, 1, 1, 1, 1) if torch.is_tensor(sd) else sd)
        else:
            self.noise = None

    def _interval_score(self, start, end, up, idx, which):
        """(b,) mean target score along end -> start * up + end * (1 - up) (phi in the authors' code)."""
        m = up[:, None] * self.intervals  # (b, K, 1, H, W)
        x = start[:, None] * m + end[:, None] * (1 - m)
        if self.noise is not None:
            x = x + self.noise[which][idx]
        b = x.shape[0]
        logits = self.forward_fn(self.model, x.reshape(b * self.k, *x.shape[2:])).float()
        p = torch.softmax(logits, dim=1).view(b, self.k, -1)
        return p.gather(2, self.targets[idx].view(-1, 1, 1).expand(-1, self.k, 1))[:, :, 0].mean(1)

    def __call__(self, masks: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(b,) losses of images ``idx`` given their masks ((b, 1, h, w) or (b, 2, 1, h, w))."""
        img, base = self.images[idx], self.baseline[idx]
        if self.method == "igos":
            up = _upscale(masks, self.size)
            reg = self.L1 * (1 - masks).abs().flatten(1).mean(1) + self.L2 * _tv(masks)
            return self._interval_score(img, base, up, idx, 0) + reg
        m_del, m_ins = masks[:, 0], masks[:, 1]
        up_del, up_ins = _upscale(m_del, self.size), _upscale(m_ins, self.size)
        both = up_del * up_ins
        score = (
            self._interval_score(img, base, both, idx, 0)  # deleting with both masks removes the decision
            - self._interval_score(base, img, both, idx, 1)  # inserting with both restores it
            + self._interval_score(img, base, up_del, idx, 2)
            - self._interval_score(base, img, up_ins, idx, 3)
        ) / 2
        m = m_del * m_ins
        reg = self.L1 * (1 - m).abs().flatten(1).mean(1) + self.L2 * _bilateral_tv(img, m, _upscale(m, self.size), self.tv_sigma)
        return score + reg


def _line_search(objective, masks, grads, alpha, beta=1e-4, decay=0.2, floor=1e-5):
    """Per-image step sizes: start at ``alpha`` and shrink by ``decay`` until the Armijo condition
    loss(new) <= loss(old) - beta alpha |g|^2 holds or alpha < ``floor`` (the authors' rule)."""
    n = masks.shape[0]
    all_idx = torch.arange(n, device=masks.device)
    with torch.no_grad():
        base = objective(masks, all_idx)
        t = -beta * grads.pow(2).flatten(1).sum(1)
        alphas = torch.full((n,), float(alpha), device=masks.device, dtype=masks.dtype)
        active = torch.ones(n, dtype=torch.bool, device=masks.device)
        view = (-1,) + (1,) * (masks.ndim - 1)
        while True:
            idx = all_idx[active]
            new = (masks[idx] - alphas[idx].view(view) * grads[idx]).clamp(0, 1)
            losses = objective(new, idx)
            still = (losses > base[idx] + alphas[idx] * t[idx]) & (alphas[idx] >= floor)
            active[idx] = still
            if not active.any():
                break
            alphas[active] *= decay
    return alphas.view(view)


def _optimise_chunk(model, forward_fn, images, baseline, targets, *, method, size, iterations, ig_iter, L1, L2, alpha, opt, noise, tv_sigma, gen):
    b = images.shape[0]
    shape = (b, 1, *size) if method == "igos" else (b, 2, 1, *size)
    masks = torch.ones(shape, device=images.device, dtype=images.dtype)
    objective = _Objective(model, forward_fn, images, baseline, targets, ig_iter, method, L1, L2, tv_sigma, noise, gen)
    all_idx = torch.arange(b, device=images.device)
    cita = torch.zeros_like(masks)
    for i in range(iterations):
        objective.redraw(1 if method == "igos" else 4)
        m = masks.detach().requires_grad_(True)
        (grads,) = torch.autograd.grad(objective(m, all_idx).sum(), m)
        if opt == "LS":
            masks = masks - _line_search(objective, masks, grads, alpha) * grads
        else:  # Nesterov's accelerated gradient with step alpha, as the authors' "NAG"
            e = i / (i + 3)
            cita_prev, cita = cita, masks - alpha * grads
            masks = cita + e * (cita - cita_prev)
        masks = masks.clamp(0, 1)
    out = masks if method == "igos" else masks[:, 0] * masks[:, 1]
    return 1 - out[:, 0]


def _check(images, targets, method, size, iterations, ig_iter, opt, batch_size):
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    if method not in IGOS_METHODS:
        raise ValueError(f"method must be one of {IGOS_METHODS}, got {method!r}")
    if targets is not None:
        t = torch.as_tensor(targets)
        if t.is_floating_point() or t.reshape(-1).shape[0] != images.shape[0]:
            raise ValueError(f"targets must be None or ({images.shape[0]},) integer class indices, got {t.dtype} of shape {tuple(t.shape)}")
    if len(tuple(size)) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"size must be (h, w) positive integers, got {size!r}")
    if size[0] > images.shape[-2] or size[1] > images.shape[-1]:
        raise ValueError(f"mask size {tuple(size)} is larger than the images' {tuple(images.shape[-2:])}")
    for name, v in (("iterations", iterations), ("ig_iter", ig_iter), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if opt not in ("LS", "NAG"):
        raise ValueError(f"opt must be 'LS' (line search) or 'NAG', got {opt!r}")


def igos_maps(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    method: str = "igos",
    size: tuple[int, int] = (7, 7),
    iterations: int = 15,
    ig_iter: int = 20,
    L1: float = 1.0,
    L2: float = 20.0,
    alpha: float = 1000.0,
    opt: str = "LS",
    noise: float = 0.2,
    tv_sigma: float = 0.01,
    sigma: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    forward_fn: ForwardFn | None = None,
    baseline: str = "authors",
    scale_smoothness: bool = True,
    noise_relative: bool = True,
) -> torch.Tensor:
    """(B, h, w) I-GOS (``method="igos"``) or iGOS++ (``"igos++"``) saliency in [0, 1] of
    ``images`` (B, C, H, W) for ``targets`` (B,) (None = the predicted class), on the model's
    device, float32. ``size`` = (h, w) of the mask; ``batch_size`` images optimised together
    (``ig_iter`` model inputs each). The settings that the authors' ImageNet setting needs carried to
    other images:

    - ``baseline``: ``"authors"`` (default: a blur of the authors' effective reach,
      ``AUTHORS_BLUR_FRACTION`` of the side) or ``"strong"`` (``perturb.default_blur_sigma``, 0.22
      of the side, this package's 0.2 behaviour); ``sigma`` overrides either.
    - ``scale_smoothness``: ``L2`` rescaled to the mask's side (``smoothness_weight``).
    - ``noise_relative``: ``noise`` is in the authors' units (ImageNet-normalised inputs) and is
      scaled by each image's value range / ``NOISE_RANGE_REFERENCE``; False: an absolute sd.

    Other parameters as in the module docstring. The model's modes, parameter gradients,
    ``requires_grad`` flags and the global RNG are left as they were."""
    _check(images, targets, method, tuple(size), iterations, ig_iter, opt, batch_size)
    if baseline not in ("authors", "strong"):
        raise ValueError(f"igos_maps.baseline must be one of ('authors', 'strong'), got {baseline!r}")
    forward_fn = forward_fn or default_forward
    device = model_device(model)
    size = (int(size[0]), int(size[1]))
    out = []
    with evaluation_mode(model), preserved_rng(), torch.compiler.set_stance("force_eager"), grad_enabled_full_precision(device):
        x = model_input(images.detach(), model, device)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        side = tuple(x.shape[-2:])
        if sigma is None:
            sigma = hiding_sigma(side, AUTHORS_BLUR_FRACTION) if baseline == "authors" else default_blur_sigma(side)
        base = fill_values(x, "blur", sigma=float(sigma))
        if scale_smoothness:
            L2 = smoothness_weight(L2, size)
        if noise_relative and len(x):
            noise = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1)) / NOISE_RANGE_REFERENCE  # (B,) per image
        if targets is None:
            with torch.no_grad():
                t = torch.cat([forward_fn(model, x[s : s + batch_size]).argmax(1) for s in range(0, x.shape[0], batch_size)])
        else:
            t = torch.as_tensor(targets, device=device).reshape(-1).long()
        for s in range(0, x.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            out.append(
                _optimise_chunk(
                    model, forward_fn, x[sl], base[sl], t[sl], method=method, size=size, iterations=iterations, ig_iter=ig_iter,
                    L1=L1, L2=L2, alpha=alpha, opt=opt, noise=noise[sl] if torch.is_tensor(noise) else noise, tv_sigma=tv_sigma, gen=gen,
                ).detach()
            )
    return torch.cat(out).float() if out else torch.zeros(0, *size, device=device)


def igos_probe_batch(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    method: str = "igos++",
    reshape_transform: Callable | None = None,
    forward_fn: ForwardFn | None = None,
    normalise: bool = True,
    **igos_kwargs,
) -> ProbeBatch:
    """What ``native_gradcam`` yields, with I-GOS / iGOS++ maps: activations of ``layer`` (a forward
    hook, after ``reshape_transform``), maps (B, h, w) at the layer's resolution (min-max
    normalised per map when ``normalise``), softmax confidences (B, M). The masks are optimised at
    ``mask_size`` (default ``default_mask_side``: four times the map's side, at most the image's)
    and averaged over each feature cell. ``targets`` None = the predicted class; the other
    ``igos_kwargs`` go to ``igos_maps``."""
    forward_fn = forward_fn or default_forward
    device = model_device(model)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with evaluation_mode(model), torch.compiler.set_stance("force_eager"), torch.inference_mode(False), torch.no_grad():
            logits = forward_fn(model, model_input(images, model, device)).float()
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the target layer did not run in the model's forward")
    acts = captured[-1]
    if reshape_transform is not None:
        acts = reshape_transform(acts)
    t = logits.argmax(1) if targets is None else torch.as_tensor(targets, device=device).reshape(-1).long()
    h, w = acts.shape[-2:]
    side = igos_kwargs.pop("mask_size", None)
    size = (default_mask_side(h, images.shape[-2]), default_mask_side(w, images.shape[-1])) if side is None else (int(side), int(side))
    maps = igos_maps(model, images, t, method=method, size=size, forward_fn=forward_fn, **igos_kwargs)
    if tuple(maps.shape[-2:]) != (h, w):  # the prototypes live on the layer's grid: each cell's mean saliency
        maps = F.adaptive_avg_pool2d(maps[:, None], (h, w))[:, 0]
    if normalise:
        maps = normalise_maps(maps)
    return ProbeBatch(acts, maps, torch.softmax(logits, dim=1))
