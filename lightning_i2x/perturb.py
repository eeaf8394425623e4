"""Perturbing images and measuring what the model makes of them: one module for every measure that
hides or shows parts of an image (targeted fine-tuning's mask mode, prototype reliance, the
deletion/insertion metrics, I-GOS baselines, SAG's minimal sufficient explanations).

Two shapes of the same fills:

- ``perturb(image, mask, fill)``: one (C, H, W) image in NumPy/SciPy, for ``Dataset.__getitem__``
  inside DataLoader workers, where one image is too small for torch's parallel kernels;
- ``fill_values(images, fill)`` and ``apply_mask(images, mask, values)``: a (B, C, H, W) batch in
  torch on the images' device, for measures that send many perturbed copies through the model at
  once (``target_probabilities``).

Fills: ``"blur"`` (Gaussian blur of the whole image), ``"noise"`` (Gaussian noise with the image's
per-channel mean and sd), ``"baseline"`` (a constant, default the per-channel mean) and
``"random"`` (uniform values over the data's range: the counterexamples of the explanatory
interactive learning literature).
"""

from __future__ import annotations

import numpy as np
import torch

from ._model import ForwardFn, default_forward, evaluation_mode, model_device
from .options import FILLS
from .options import MaskFill as Fill

__all__ = [
    "FILLS",
    "Fill",
    "pixel_mask",
    "default_sigma",
    "hiding_sigma",
    "default_blur_sigma",
    "perturb",
    "blur",
    "fill_values",
    "apply_mask",
    "target_probabilities",
]



def _check_fill(fill: str) -> None:
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")


def pixel_mask(regions: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Feature-map locations (..., h, w) to the input pixels (..., H, W) they cover: pixel (y, x)
    belongs to location (floor(y h / H), floor(x w / W)), nearest-neighbour upsampling.

    Example::

        >>> pixel_mask(np.array([[True, False]]), (2, 4)).astype(int)
        array([[1, 1, 0, 0],
               [1, 1, 0, 0]])
    """
    r = np.asarray(regions, dtype=bool)
    h, w = r.shape[-2:]
    big_h, big_w = int(image_size[0]), int(image_size[1])
    rows = (np.arange(big_h) * h) // big_h
    cols = (np.arange(big_w) * w) // big_w
    return r[..., rows[:, None], cols[None, :]]


def default_sigma(image_size: tuple[int, int], feature_shape: tuple[int, int]) -> float:
    """Half a feature location's block of pixels (at least 1): enough to wipe out what it showed."""
    return max(1.0, 0.5 * max(image_size[0] / feature_shape[0], image_size[1] / feature_shape[1]))


def hiding_sigma(image_size: tuple[int, int], fraction: float) -> float:
    """A blur that hides an image's content rather than its edges: sigma = ``fraction`` of the
    image's larger side, at least 1 px (the iGOS++ code blurs 224 px images with sigma 50, 0.22)."""
    return max(1.0, float(fraction) * max(int(image_size[0]), int(image_size[1])))


def default_blur_sigma(image_size: tuple[int, int]) -> float:
    """The iGOS++ code's blur scaled to the image: sigma 50 px at 224 px, i.e. 0.22 of the larger
    side (6.25 px at 28 px): strong enough to wipe out the object, not just its edges. The baseline
    of I-GOS/iGOS++ and of the deletion/insertion metric."""
    return hiding_sigma(image_size, 50.0 / 224.0)


def perturb(
    image: torch.Tensor,
    mask: np.ndarray | torch.Tensor,
    fill: str = "blur",
    *,
    seed: int = 0,
    sigma: float = 2.0,
    baseline: float | None = None,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """A copy of the (C, H, W) ``image`` whose pixels under the (H, W) ``mask`` are replaced, the
    others left bitwise as they were. ``fill`` as in the module docstring; ``seed`` seeds the noise
    and the random values (the same seed gives the same image); ``value_range`` bounds ``"random"``
    (default the image's own min and max).

    Raises ValueError for an unknown fill or a mask of another shape, TypeError for a non-tensor.
    """
    _check_fill(fill)
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise TypeError(f"perturbing needs (C, H, W) image tensors, got {type(image).__name__} {tuple(getattr(image, 'shape', ()))}")
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    if m.shape != tuple(image.shape[1:]):
        raise ValueError(f"mask of shape {m.shape} for an image of shape {tuple(image.shape)}")
    if not m.any():
        return image.clone()
    x = image.detach().cpu().numpy()
    work = x.astype(np.float64)
    if fill == "blur":
        from scipy.ndimage import gaussian_filter

        values = gaussian_filter(work, sigma=(0.0, float(sigma), float(sigma)), mode="reflect", truncate=3.0)
    elif fill == "noise":
        rng = np.random.default_rng(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        values = work.mean(axis=(1, 2), keepdims=True) + work.std(axis=(1, 2), keepdims=True) * rng.standard_normal(work.shape)
    elif fill == "random":
        rng = np.random.default_rng(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        lo, hi = (work.min(), work.max()) if value_range is None else value_range
        values = rng.uniform(float(lo), float(hi), size=work.shape)
    else:
        values = work.mean(axis=(1, 2), keepdims=True) * np.ones_like(work) if baseline is None else np.full_like(work, float(baseline))
    out = x.copy()
    out[:, m] = values[:, m].astype(x.dtype)
    return torch.from_numpy(out).to(image.device)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (B, C, H, W) batch (reflected borders, kernel of +-3 sigma), on its device."""
    if sigma <= 0:
        return images.clone()
    radius = max(1, int(3.0 * sigma + 0.5))
    h, w = images.shape[-2:]
    radius = min(radius, h - 1, w - 1) if min(h, w) > 1 else 0
    if radius == 0:
        return images.clone()
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    x = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def fill_values(
    images: torch.Tensor,
    fill: str = "blur",
    *,
    sigma: float = 2.0,
    baseline: float | None = None,
    value_range: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The values a (B, C, H, W) batch's hidden pixels take under ``fill``, one per pixel, same
    shape and device. ``generator`` (on the images' device) makes noise and random values
    reproducible; ``value_range`` bounds ``"random"`` (default each image's own min and max)."""
    _check_fill(fill)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach()
    if fill == "blur":
        return blur(x, sigma)
    if fill == "baseline":
        if baseline is not None:
            return torch.full_like(x, float(baseline))
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if fill == "noise":
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x.mean(dim=(2, 3), keepdim=True) + x.std(dim=(2, 3), keepdim=True, unbiased=False) * z
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if value_range is not None:
        lo, hi = (torch.tensor(float(v), device=x.device, dtype=x.dtype) for v in value_range)
    else:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return lo + (hi - lo) * u


def apply_mask(images: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``images`` with the pixels where ``mask`` is true taken from ``values``. ``mask`` is
    (B, H, W) or (B, 1, H, W) bool, or a float mask in [0, 1] that blends the two (1 = values)."""
    m = mask if mask.ndim == 4 else mask.unsqueeze(1)
    if m.dtype == torch.bool:
        return torch.where(m, values, images)
    m = m.to(images.dtype)
    return images * (1 - m) + values * m


def target_probabilities(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    batch_size: int = 256,
    forward_fn: ForwardFn | None = None,
) -> torch.Tensor:
    """(B,) softmax probability of ``targets[i]`` for each image, in eval mode without autograd,
    ``batch_size`` images per forward; the model's modes are put back afterwards. Results stay on
    the model's device (one host copy per call is the caller's choice)."""
    forward_fn = forward_fn or default_forward
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    targets = torch.as_tensor(targets, device=device).reshape(-1)
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} targets")
    out = []
    with evaluation_mode(model), torch.no_grad(), torch.compiler.set_stance("force_eager"):
        for s in range(0, images.shape[0], batch_size):
            logits = forward_fn(model, images[s : s + batch_size].to(device=device, dtype=dtype)).float()
            out.append(torch.softmax(logits, dim=1).gather(1, targets[s : s + batch_size, None])[:, 0])
    return torch.cat(out) if out else torch.zeros(0, device=device)
