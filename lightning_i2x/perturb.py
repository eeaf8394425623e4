"""Perturbing images and measuring what the model makes of them: one module for every measure that
hides or shows parts of an image (targeted fine-tuning's mask mode, prototype reliance, the
deletion/insertion metrics, I-GOS baselines, SAG's minimal sufficient explanations).

Two shapes of the same fills:

- ``perturb(image, mask, fill)``: one (C, H, W) image, for ``Dataset.__getitem__`` inside
  DataLoader workers;
- ``fill_values(images, fill)`` and ``apply_mask(images, mask, values)``: a (B, C, H, W) batch in
  torch on the images' device, for measures that send many perturbed copies through the model at
  once (``target_probabilities``).

Both blur with the one ``blur`` (the same kernel, truncation and border rule as
``scipy.ndimage.gaussian_filter(mode="reflect", truncate=3.0)``).

Fills (``FILLS``, in the order a stored reliance indexes them):

- ``"blur"``: Gaussian blur of the whole image. It hides edges and texture, not content that is
  uniform over more than the blur's reach: a blurred uniform shade swatch keeps its shade;
- ``"noise"``: Gaussian noise with the image's per-channel mean and sd;
- ``"baseline"``: a constant, default the image's per-channel mean;
- ``"random"``: uniform values over the data's range (the counterexamples of the explanatory
  interactive learning literature);
- ``"mean"``: the batch's mean image at each pixel (what the probe shows there on average);
- ``"resample"``: the same pixels of another image of another class (``resample_donors``, a seeded
  choice): the region's content is removed whatever it is, uniform or not, and what replaces it is
  in-distribution for that place. The content-removing fill the reliance measure defaults to.

``"mean"`` and ``"resample"`` need other images (``IMAGE_FILLS`` are the others): ``perturb`` takes
them as ``reference``. ``LatentSwap`` does the same at a layer's output instead of the pixels;
``LatentProjection`` removes a subspace there instead (``project_component``).
"""

from __future__ import annotations

import numpy as np
import torch

from ._model import ForwardFn, default_forward, evaluation_mode, model_device
from .options import FILLS, IMAGE_FILLS
from .options import MaskFill as Fill

__all__ = [
    "FILLS",
    "IMAGE_FILLS",
    "Fill",
    "REFERENCE_FILLS",
    "pixel_mask",
    "default_sigma",
    "hiding_sigma",
    "default_blur_sigma",
    "perturb",
    "blur",
    "gaussian_kernel",
    "resample_donors",
    "fill_values",
    "LatentSwap",
    "LatentProjection",
    "project_component",
    "apply_mask",
    "target_probabilities",
]

REFERENCE_FILLS: tuple[str, ...] = ("mean", "resample")
"""The fills taken from other images than the perturbed one (``perturb``'s ``reference``)."""


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
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """A copy of the (C, H, W) ``image`` whose pixels under the (H, W) ``mask`` are replaced, the
    others left bitwise as they were: ``fill_values`` and ``apply_mask`` on a batch of one, so the
    mask repair's counterexamples and the batched measures (reliance) share one implementation.

    Args:
        image: the (C, H, W) image.
        mask: (H, W) bool, the pixels to replace.
        fill: one of ``FILLS`` (module docstring).
        seed: seeds the noise and the random values (the same seed gives the same image).
        sigma: the blur's standard deviation in pixels.
        baseline: the ``"baseline"`` constant (default the image's per-channel mean).
        value_range: bounds of ``"random"`` (default the image's own min and max).
        reference: a (C, H, W) image, needed by the ``REFERENCE_FILLS``: for ``"resample"`` the
            donor (another image, of another class: ``resample_donors``), for ``"mean"`` the mean
            image (of the batch or data set the image comes from).

    Raises ValueError for an unknown fill, a mask of another shape or a missing reference,
    TypeError for a non-tensor.
    """
    _check_fill(fill)
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise TypeError(f"perturbing needs (C, H, W) image tensors, got {type(image).__name__} {tuple(getattr(image, 'shape', ()))}")
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    if m.shape != tuple(image.shape[1:]):
        raise ValueError(f"mask of shape {m.shape} for an image of shape {tuple(image.shape)}")
    if fill in REFERENCE_FILLS and (not isinstance(reference, torch.Tensor) or tuple(reference.shape) != tuple(image.shape)):
        raise ValueError(f"fill {fill!r} takes its values from another image: pass reference= a tensor of shape {tuple(image.shape)} "
                         f"(got {None if reference is None else tuple(getattr(reference, 'shape', ()))}); the fills of one image "
                         f"alone are {IMAGE_FILLS}")
    if not m.any():
        return image.clone()
    # the batch fills on a batch of one, in float64 on the CPU (the same numbers in a DataLoader worker)
    x = image.detach().cpu()
    if fill in REFERENCE_FILLS:  # the donor's pixels (what fill_values takes for "resample"), or the mean image
        values = reference.detach().cpu().to(x.dtype)[None]
    else:
        gen = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        values = fill_values(x.double()[None], fill, sigma=sigma, baseline=baseline, value_range=value_range, generator=gen).to(x.dtype)
    return apply_mask(x[None], torch.from_numpy(m)[None], values)[0].to(image.device)


def gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """The normalised 1-D Gaussian of ``blur``: radius ``int(truncate * sigma + 0.5)``, as
    ``scipy.ndimage.gaussian_filter`` builds it."""
    radius = int(float(truncate) * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / float(sigma)) ** 2)
    return k / k.sum()


def _symmetric_index(n: int, radius: int) -> np.ndarray:
    """Indices of an axis of length ``n`` padded by ``radius`` on each side with half-sample
    symmetric reflection (``d c b a | a b c d | d c b a``, scipy's ``"reflect"``), repeated as often
    as a radius longer than the axis needs."""
    i = np.arange(-radius, n + radius) % (2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (B, C, H, W) batch on its device, each channel alone: the kernel of
    ``gaussian_kernel`` (+-3 sigma) and half-sample symmetric borders, the same numbers as
    ``scipy.ndimage.gaussian_filter(x, (0, 0, sigma, sigma), mode="reflect", truncate=3.0)``. The one
    blur of ``perturb`` and ``fill_values``."""
    if sigma <= 0:
        return images.clone()
    kern = gaussian_kernel(sigma)
    radius = (kern.size - 1) // 2
    h, w = images.shape[-2:]
    if radius == 0 or h == 0 or w == 0:
        return images.clone()
    k = torch.as_tensor(kern, device=images.device, dtype=images.dtype)
    c = images.shape[1]
    rows = torch.as_tensor(_symmetric_index(h, radius), device=images.device)
    cols = torch.as_tensor(_symmetric_index(w, radius), device=images.device)
    x = images[..., rows, :][..., cols]
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def resample_donors(labels, seed: int = 0) -> np.ndarray:
    """(B,) for each image the index of its donor for the ``"resample"`` fill: an image of another
    class, drawn uniformly from a generator seeded by ``seed`` (the same labels and seed give the
    same donors); where every image has the same class, another image (itself when there is one).

    Example::

        >>> d = resample_donors([0, 0, 1, 1], seed=0)
        >>> [int(v) for v in np.asarray([0, 0, 1, 1])[d]]
        [1, 1, 0, 0]
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    b = y.shape[0]
    if b == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(y, kind="stable")
    classes, start, count = np.unique(y[order], return_index=True, return_counts=True)
    c = np.searchsorted(classes, y)
    s, n = start[c], count[c]
    u = np.random.default_rng([int(seed), 0x5EED]).random(b)
    others = b - n
    r = np.floor(u * np.maximum(others, 1)).astype(np.int64)
    out = order[np.clip(np.where(r < s, r, r + n), 0, b - 1)]  # skip the image's own class block in the sorted order
    single = others == 0
    if single.any():  # one class only: any other image
        idx = np.arange(b)
        alt = np.floor(u * max(b - 1, 1)).astype(np.int64)
        out = np.where(single, idx if b == 1 else np.where(alt < idx, alt, alt + 1), out)
    return out.astype(np.int64)


def fill_values(
    images: torch.Tensor,
    fill: str = "blur",
    *,
    sigma: float = 2.0,
    baseline: float | None = None,
    value_range: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    labels=None,
    seed: int = 0,
    donors: np.ndarray | None = None,
) -> torch.Tensor:
    """The values a (B, C, H, W) batch's hidden pixels take under ``fill``, one per pixel, same
    shape and device.

    Args:
        images: the (B, C, H, W) batch.
        fill: one of ``FILLS`` (module docstring).
        sigma: the blur's standard deviation in pixels.
        baseline: the ``"baseline"`` constant (default each image's per-channel mean).
        value_range: bounds of ``"random"`` (default each image's own min and max).
        generator: a generator on the images' device that makes noise and random values
            reproducible.
        labels: (B,) classes, for ``"resample"``: each image's donor is ``resample_donors(labels,
            seed)``.
        seed: seeds the donors.
        donors: (B,) donor indices into ``images`` instead of ``labels`` and ``seed``.

    Raises ValueError for an unknown fill, a batch of another shape, or ``"resample"`` without
    labels or donors.
    """
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
    if fill == "mean":
        return x.mean(dim=0, keepdim=True).expand_as(x).clone()
    if fill == "resample":
        if donors is None:
            if labels is None:
                raise ValueError('fill "resample" takes each image\'s pixels from an image of another class: pass labels= (or donors=)')
            donors = resample_donors(labels, seed)
        d = np.asarray(donors, dtype=np.int64).reshape(-1)
        if d.shape[0] != x.shape[0] or (d.size and (d.min() < 0 or d.max() >= x.shape[0])):
            raise ValueError(f"donors must be {x.shape[0]} indices into the batch, got shape {d.shape}")
        return x[torch.as_tensor(d, device=x.device)].clone()
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


class LatentSwap:
    """The same intervention at a layer's output instead of the pixels, for any model: a forward
    hook on ``layer`` (whose output is (B, C, h, w)) that replaces the feature vectors at the
    locations of ``mask`` with the ``values`` given for them (another image's features at the same
    positions, as ``"resample"`` does with pixels). Use as a context manager; set ``mask`` (B, h, w)
    bool and ``values`` (B, C, h, w) before each forward, or leave ``mask`` None to record the
    layer's output in ``captured`` (the clean pass) instead.

    Example::

        >>> layer = torch.nn.Identity()
        >>> with LatentSwap(layer) as swap:
        ...     swap.mask = torch.tensor([[[True, False]]])
        ...     swap.values = torch.ones(1, 1, 1, 2)
        ...     layer(torch.zeros(1, 1, 1, 2)).tolist()
        [[[[1.0, 0.0]]]]
    """

    def __init__(self, layer: torch.nn.Module):
        if not isinstance(layer, torch.nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module (the target layer), got {type(layer).__name__}")
        self.layer = layer
        self.mask: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.captured: list[torch.Tensor] = []
        self._handle = None

    def _hook(self, module, inputs, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ValueError(f"the latent intervention needs a layer whose output is a (B, C, h, w) tensor, got "
                             f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}")
        if self.mask is None:
            self.captured.append(output.detach())
            return None
        m = self.mask.to(output.device)
        if m.shape != (output.shape[0], *output.shape[2:]):
            raise ValueError(f"latent mask of shape {tuple(m.shape)} for a layer output of shape {tuple(output.shape)}")
        return torch.where(m[:, None], self._replacement(output), output)

    def _replacement(self, output: torch.Tensor) -> torch.Tensor:
        """What the masked locations become: the given ``values``."""
        return self.values.to(device=output.device, dtype=output.dtype)

    def __enter__(self) -> "LatentSwap":
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def project_component(maps: torch.Tensor, basis: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``maps`` (B, d, h, w) with every location's component in the subspace of ``basis`` set to
    that of ``reference``: ``a - V V^T (a - z)``. ``basis``: (d, r) orthonormal columns, or
    (B, d, r) one per image (zero columns are no direction); ``reference``: (d,), (B, d) or None
    (0: the component is removed). The one formula of P-ClArC's ``project_out`` and of the
    reliance measure's ``intervention="project"``.

    Example::

        >>> a = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
        >>> project_component(a, torch.tensor([[1.0], [0.0]]), torch.tensor([1.0, 1.0])).flatten().tolist()
        [1.0, 4.0]
    """
    v = basis.to(device=maps.device, dtype=maps.dtype)
    v = v.expand(maps.shape[0], *v.shape) if v.ndim == 2 else v
    if v.ndim != 3 or v.shape[:2] != maps.shape[:2]:
        raise ValueError(f"a basis of shape {tuple(basis.shape)} for maps of shape {tuple(maps.shape)}: it must be "
                         f"({maps.shape[1]}, r) or ({maps.shape[0]}, {maps.shape[1]}, r)")
    centred = maps
    if reference is not None:
        z = reference.to(device=maps.device, dtype=maps.dtype)
        centred = maps - (z.view(1, -1, 1, 1) if z.ndim == 1 else z.view(z.shape[0], -1, 1, 1))
    coeff = torch.einsum("bdhw,bdr->brhw", centred, v)
    return maps - torch.einsum("brhw,bdr->bdhw", coeff, v)


class LatentProjection(LatentSwap):
    """The latent intervention that removes a direction instead of swapping the vector: at the
    locations of ``mask`` the layer's output has its component in ``basis`` set to ``reference``'s
    (``project_component``; a prototype's centred subspace and the other locations' mean,
    ``analysis.suspect_basis``), the rest of the vector kept. Set ``mask`` (B, h, w), ``basis``
    (d, r) or (B, d, r) and ``reference`` (d,) or (B, d) before each forward; ``mask`` None records
    the output in ``captured`` as ``LatentSwap`` does."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__(layer)
        self.basis: torch.Tensor | None = None
        self.reference: torch.Tensor | None = None

    def _replacement(self, output: torch.Tensor) -> torch.Tensor:
        if self.basis is None:
            raise ValueError("LatentProjection needs basis= (the directions to project out) before a masked forward")
        return project_component(output, self.basis, self.reference)


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
