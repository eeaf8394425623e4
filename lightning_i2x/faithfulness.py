"""Deletion and insertion: do the pixels a saliency map ranks first carry the model's decision?

The metrics of RISE (Petsiuk, Das, Saenko 2018) as I-GOS and iGOS++ (Qi, Khorram, Li 2020;
Khorram, Lawson, Li 2021) use them. Pixels are taken in decreasing saliency order (the map
upsampled bilinearly to the image; ties go to the lower flat pixel index) and, in ``steps`` equal
slices of the image:

- deletion: replaced by the fill (default a heavily blurred copy of the image, as the iGOS++ code
  does; RISE deletes to a constant, ``fill="baseline"``): a faithful map makes the target-class
  probability fall at once, a low area under the curve;
- insertion: restored onto the fill, starting from the fully filled image: a faithful map makes
  the probability rise at once, a high area under the curve.

Each curve has ``steps + 1`` points at pixel fractions ``0, 1/steps, ..., 1`` (pixel counts rounded
to whole pixels) and its area is the trapezoid rule over the fraction, so x runs over [0, 1]. One
fill is used for both curves, so that the deletion curve ends where the insertion curve starts.

Cost: ``2 (steps + 1)`` model forwards per image, without autograd: with the default 64 steps,
130 forwards, about 43 probe passes (one probe pass = one forward + backward of the image, counted
as three forwards). All images and steps of a batch go through the model together,
``batch_size`` model inputs at a time.

The random order (``random_baseline``) is the chance level every area should be read against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .guards import preserved_rng
from .perturb import FILLS, apply_mask, fill_values, target_probabilities

__all__ = ["FaithfulnessResult", "default_blur_sigma", "pixel_ranks", "deletion_insertion", "random_maps", "random_baseline"]

ForwardFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FaithfulnessResult:
    """Deletion and insertion curves and their areas, on the CPU in float64.

    ``fractions`` (steps + 1,): fraction of pixels removed (deletion) or restored (insertion) at each
    point; ``deletion_curves`` and ``insertion_curves`` (B, steps + 1): the target-class softmax
    probability at each point; ``deletion_auc`` and ``insertion_auc`` (B,): trapezoid areas over
    ``fractions``. Lower deletion and higher insertion areas mean a more faithful map."""

    fractions: torch.Tensor
    deletion_curves: torch.Tensor
    insertion_curves: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor

    @property
    def mean_deletion_auc(self) -> float:
        return float(self.deletion_auc.mean())

    @property
    def mean_insertion_auc(self) -> float:
        return float(self.insertion_auc.mean())


def default_blur_sigma(image_size: tuple[int, int]) -> float:
    """The iGOS++ code's blur scaled to the image: sigma 50 px at 224 px, i.e. 0.22 of the larger
    side (6.25 px at 28 px): strong enough to wipe out the object, not just its edges."""
    return 50.0 / 224.0 * max(int(image_size[0]), int(image_size[1]))


def _check_inputs(images, targets, maps, steps) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        raise ValueError(f"maps must be a (B, h, w) tensor, got {type(maps).__name__} {tuple(getattr(maps, 'shape', ()))}")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {maps.shape[0]} maps: pass one map per image")
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    t = torch.as_tensor(targets).reshape(-1)
    if t.shape[0] != images.shape[0] or t.is_floating_point():
        raise ValueError(f"targets must be ({images.shape[0]},) integer class indices, got {t.dtype} of shape {tuple(torch.as_tensor(targets).shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return t.long()


def pixel_ranks(maps: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) int64 rank of each pixel in decreasing saliency (0 = most salient) after bilinear
    upsampling (``align_corners=False``, as image resizing does); ties go to the lower flat index."""
    b = maps.shape[0]
    up = F.interpolate(maps.detach()[:, None].double(), size=tuple(image_size), mode="bilinear", align_corners=False)[:, 0]
    order = torch.sort(up.reshape(b, -1), dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand(b, -1))
    return ranks.view(b, *image_size)


def _pixel_counts(n_pixels: int, steps: int) -> torch.Tensor:
    """Pixels removed or restored after step k = round(k N / steps), k = 0..steps, exact integers."""
    return torch.tensor([(2 * k * n_pixels + steps) // (2 * steps) for k in range(steps + 1)], dtype=torch.long)


def _curves(model, images, fills, targets, ranks, counts, *, insertion, batch_size, forward_fn):
    """Target probabilities (B, steps + 1) of all perturbed copies, ``batch_size`` inputs a forward."""
    b, s1 = images.shape[0], counts.shape[0]
    counts = counts.to(images.device)
    out = []
    for start in range(0, b * s1, batch_size):
        j = torch.arange(start, min(start + batch_size, b * s1), device=images.device)
        i, k = j // s1, j % s1
        mask = ranks[i] < counts[k][:, None, None]
        x, v = (fills[i], images[i]) if insertion else (images[i], fills[i])
        out.append(target_probabilities(model, apply_mask(x, mask, v), targets[i], batch_size=batch_size, forward_fn=forward_fn))
    return torch.cat(out).view(b, s1)


def deletion_insertion(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    *,
    steps: int = 64,
    fill: str = "blur",
    sigma: float | None = None,
    baseline: float | None = None,
    batch_size: int = 256,
    forward_fn: ForwardFn | None = None,
) -> FaithfulnessResult:
    """Deletion and insertion curves and areas of ``maps`` (B, h, w; any resolution, higher = more
    important) for ``images`` (B, C, H, W) and ``targets`` (B,) class indices.

    ``fill``: what deleted pixels become and insertion starts from, one of ``perturb.FILLS``
    (default ``"blur"`` with ``sigma`` = ``default_blur_sigma``; ``"baseline"`` is a constant,
    ``baseline`` or the per-channel mean). ``"noise"`` and ``"random"`` are drawn from a generator
    seeded 0, not from the global RNG. The model's modes, gradients and the RNG are left as they
    were. Raises ValueError on mismatched shapes, ``steps`` < 1 or an unknown fill.
    """
    t = _check_inputs(images, targets, maps, steps)
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = next(model.parameters()).device
    x = images.detach().to(device)
    h, w = x.shape[-2:]
    with preserved_rng():
        gen = torch.Generator(device=device).manual_seed(0) if fill in ("noise", "random") else None
        fills = fill_values(x, fill, sigma=default_blur_sigma((h, w)) if sigma is None else float(sigma), baseline=baseline, generator=gen)
        ranks = pixel_ranks(maps.to(device), (h, w))
        counts = _pixel_counts(h * w, steps)
        t = t.to(device)
        dele = _curves(model, x, fills, t, ranks, counts, insertion=False, batch_size=batch_size, forward_fn=forward_fn)
        ins = _curves(model, x, fills, t, ranks, counts, insertion=True, batch_size=batch_size, forward_fn=forward_fn)
    fractions = counts.double() / (h * w)
    dele, ins = dele.double().cpu(), ins.double().cpu()
    return FaithfulnessResult(fractions, dele, ins, torch.trapezoid(dele, fractions, dim=1), torch.trapezoid(ins, fractions, dim=1))


def random_maps(n: int, image_size: tuple[int, int], *, seed: int = 0) -> torch.Tensor:
    """(n, H, W) uniform random maps from a local generator: a random pixel order, the chance level."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand((int(n), int(image_size[0]), int(image_size[1])), generator=gen, dtype=torch.float64)


def random_baseline(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    seed: int = 0,
    **kwargs,
) -> FaithfulnessResult:
    """``deletion_insertion`` of a seeded random pixel order (global RNG untouched); ``kwargs`` as there."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    maps = random_maps(images.shape[0], tuple(images.shape[-2:]), seed=seed)
    return deletion_insertion(model, images, targets, maps, **kwargs)
