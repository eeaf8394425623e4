"""Morpho-MNIST measures and perturbations of digit images (Castro et al., JMLR 2019, arXiv 1809.10780).

Implemented from the paper's definitions. Each image is upsampled ``scale`` times (pixel replication
smoothed as a Gaussian pyramid step) and binarised at half its intensity range; then

- area: the foreground pixels / scale^2 (px^2);
- length: the skeleton's path length (neighbours along a row or column count 1, diagonal ones
  sqrt 2) / scale (px);
- thickness: 2 x the mean of the distance map over the skeleton / scale (px);
- slant: arctan(-mu11 / mu02) from the foreground's central moments (rad; positive leans right);
- width, height: the extent, after cutting ``bound_frac`` of the mass on each side, of the
  image sheared upright by its slant (the bounding parallelogram) / scale (px).

The skeleton is the medial axis in the paper (``skeleton="medial_axis"``); the default is a
thinning of the same binary image with its Euclidean distance map, a hundred times faster.

The perturbations work on the same upsampled binary image and return it averaged back to the
input size, in [0, 1]: thickening and thinning are a dilation or an erosion with a Euclidean disk
(through the distance transform, so a radius need not be a whole pixel), shearing an affine map
about the centre of mass. ``set_slant`` and ``set_thickness`` reach a target value per image, which
the planted-chain tests and benchmark use to render MNIST under a known structural model.

scikit-image (the optional extra ``morpho``) supplies the skeleton (thinning or medial axis).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from scipy import ndimage

from .._core import check_choice, check_fraction, check_int, require

__all__ = [
    "MORPHO_NAMES", "ContextFn", "morpho_measures", "thicken", "thin", "shear", "set_slant", "set_thickness", "as_images",
]

MORPHO_NAMES = ("area", "length", "thickness", "slant", "width", "height")

ContextFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
"""A context function: images (N, H, W) -> {feature name: (N,) values}. ``morpho_measures`` is
the default; any data set can give its own."""


def as_images(images, owner: str = "images") -> np.ndarray:
    """Images as a float64 (N, H, W) array: accepts (H, W), (N, H, W) or (N, 1, H, W), NumPy or torch."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape[1:], default=0) < 2:
        raise ValueError(f"{owner} must be grey images shaped (H, W), (N, H, W) or (N, 1, H, W), got shape {np.shape(images)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{owner} must be finite")
    return a


def _skimage():
    return require("skimage.morphology", "the Morpho-MNIST measures")


def _upsample(img: np.ndarray, scale: int) -> np.ndarray:
    """Pixel replication then a Gaussian of sigma scale / 3: the smoothing of a Gaussian pyramid's
    expansion step (scikit-image's ``pyramid_expand``, whose bicubic step this skips, five times
    faster with the same edges to a tenth of a pixel)."""
    if scale == 1:
        return img
    return ndimage.gaussian_filter(np.kron(img, np.ones((scale, scale))), scale / 3.0, mode="constant")


def _upsampled_binary(img: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    up = _upsample(img, scale)
    lo, hi = up.min(), up.max()
    return up - lo, (up >= lo + 0.5 * (hi - lo) if hi > lo else np.zeros(up.shape, bool))


def _binary(img: np.ndarray, scale: int) -> np.ndarray:
    return _upsampled_binary(img, scale)[1]


def _skeleton(b: np.ndarray, method: str, morphology) -> tuple[np.ndarray, np.ndarray]:
    """The skeleton and the distance map: skimage's ``medial_axis`` (the paper's), or a thinning
    (``skeletonize``) with the Euclidean distance transform, 100 times faster."""
    if method == "medial_axis":
        return morphology.medial_axis(b, return_distance=True, rng=0)
    return morphology.skeletonize(b), ndimage.distance_transform_edt(b)


def _path_length(skel: np.ndarray) -> float:
    """Length of a one-pixel-wide skeleton: each pair of 8-neighbours counted once (1 or sqrt 2)."""
    s = skel.astype(np.int64)
    straight = (s[:, :-1] * s[:, 1:]).sum() + (s[:-1, :] * s[1:, :]).sum()
    diagonal = (s[:-1, :-1] * s[1:, 1:]).sum() + (s[:-1, 1:] * s[1:, :-1]).sum()
    return float(straight + np.sqrt(2.0) * diagonal)


def _slant_of(binary: np.ndarray) -> float:
    y, x = np.nonzero(binary)
    if y.size < 2:
        return float("nan")
    dy, dx = y - y.mean(), x - x.mean()
    mu02 = (dy * dy).sum()
    return float(np.arctan(-(dx * dy).sum() / mu02)) if mu02 > 0 else float("nan")


def _extent(coord: np.ndarray, mass: np.ndarray, bound_frac: float) -> float:
    """Extent of a mass along a pixel coordinate between its ``bound_frac`` and ``1 - bound_frac``
    quantiles, each pixel's mass spread over a unit interval."""
    order = np.argsort(coord, kind="stable")
    c, m = coord[order], mass[order]
    cum = np.concatenate([[0.0], np.cumsum(m)]) / m.sum()

    def at(q):  # coordinate where the cumulative mass reaches q
        i = min(int(np.searchsorted(cum, q, side="left")), c.size) - 1
        i = max(i, 0)
        return c[i] + (q - cum[i]) / max(cum[i + 1] - cum[i], 1e-12)
    return float(max(at(1.0 - bound_frac) - at(bound_frac), 0.0))


def _measure_one(img: np.ndarray, scale: int, bound_frac: float, skeleton: str, morphology) -> dict[str, float]:
    up, b = _upsampled_binary(img, scale)
    if not b.any():
        return dict.fromkeys(MORPHO_NAMES, float("nan")) | {"area": 0.0}
    skel, dist = _skeleton(b, skeleton, morphology)
    slant = _slant_of(b)
    y, x = np.nonzero(up > 0)
    mass = up[y, x]
    t = np.tan(slant) if np.isfinite(slant) else 0.0
    upright_x = x + t * (y - (y * mass).sum() / mass.sum())
    return {
        "area": float(b.sum()) / scale**2,
        "length": _path_length(skel) / scale,
        "thickness": 2.0 * float(dist[skel].mean()) / scale if skel.any() else float("nan"),
        "slant": slant,
        "width": _extent(upright_x, mass, bound_frac) / scale,
        "height": _extent(y.astype(np.float64), mass, bound_frac) / scale,
    }


def morpho_measures(images, *, scale: int = 4, bound_frac: float = 0.02, skeleton: str = "thin") -> dict[str, np.ndarray]:
    """The six Morpho-MNIST measures of each image: {name: (N,) array} for ``MORPHO_NAMES``
    (area px^2, length px, thickness px, slant rad, width px, height px). An empty image has area 0
    and NaN elsewhere. Works on any intensity range (each image is binarised at half its own).

    ``skeleton``: ``"thin"`` (default: a thinning with the Euclidean distance map, about 1 ms an
    image) or ``"medial_axis"`` (the paper's, scikit-image's medial axis: about 120 ms an image, as
    it rebuilds its lookup table at each call). The extents weigh each pixel by its upsampled
    intensity (the image's mass)."""
    check_choice("morpho_measures", "skeleton", skeleton, ("thin", "medial_axis"))
    check_int("morpho_measures", "scale", scale)
    check_fraction("morpho_measures", "bound_frac", bound_frac, closed_low=True)
    if bound_frac >= 0.5:
        raise ValueError(f"morpho_measures.bound_frac must be below 0.5, got {bound_frac}")
    a = as_images(images)
    morphology = _skimage()
    rows = [_measure_one(img, scale, bound_frac, skeleton, morphology) for img in a]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in MORPHO_NAMES}


def _downsample(up: np.ndarray, scale: int) -> np.ndarray:
    h, w = up.shape[0] // scale, up.shape[1] // scale
    return up[: h * scale, : w * scale].reshape(h, scale, w, scale).mean(axis=(1, 3))


def _dilate(b: np.ndarray, radius: float) -> np.ndarray:
    """Dilation with a Euclidean disk of ``radius`` pixels (negative: erosion), as a soft image:
    the boundary moves to the signed distance ``radius`` with a one-pixel ramp, so that a radius
    below a pixel still moves the edge once averaged back to the input size."""
    signed = np.where(b, 0.5 - ndimage.distance_transform_edt(b), ndimage.distance_transform_edt(~b) - 0.5)
    return np.clip(0.5 + radius - signed, 0.0, 1.0)


def _shear_binary(b: np.ndarray, t: float) -> np.ndarray:
    """Shear about the centre of mass: a row ``dy`` above it moves ``t * dy`` to the right."""
    y, x = np.nonzero(b)
    if not y.size or t == 0:
        return b.astype(np.float64)
    yc = y.mean()
    # output (r, c) samples input (r, c + t * (r - yc)): matrix [[1, 0], [t, 1]], offset -t * yc
    return ndimage.affine_transform(b.astype(np.float64), np.array([[1.0, 0.0], [t, 1.0]]), offset=(0.0, -t * yc), order=1)


def _perturb(images, scale: int, change: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    a = as_images(images)
    check_int("perturbation", "scale", scale)
    out = np.empty_like(a)
    for i, img in enumerate(a):
        out[i] = _downsample(change(i, _binary(img, scale)).astype(np.float64), scale)
    return out


def _thickness_of(b: np.ndarray, scale: int, morphology) -> float:
    if not b.any():
        return float("nan")
    skel, dist = _skeleton(b, "thin", morphology)
    return 2.0 * float(dist[skel].mean()) / scale if skel.any() else float("nan")


def thicken(images, amount: float = 1.0, *, scale: int = 4) -> np.ndarray:
    """Dilate each digit with a disk of radius ``amount`` x its half-thickness (Morpho-MNIST's
    thickening). Returns (N, H, W) in [0, 1]."""
    if not amount > 0:
        raise ValueError(f"thicken.amount must be positive, got {amount}")
    morphology = _skimage()
    return _perturb(images, scale, lambda i, b: _dilate(b, amount * _nan0(_thickness_of(b, scale, morphology)) * scale / 2))


def thin(images, amount: float = 0.5, *, scale: int = 4) -> np.ndarray:
    """Erode each digit with a disk of radius ``amount`` x its half-thickness (Morpho-MNIST's
    thinning; ``amount`` in (0, 1) so the stroke survives). Returns (N, H, W) in [0, 1]."""
    if not 0 < amount < 1:
        raise ValueError(f"thin.amount must be in (0, 1), got {amount}")
    morphology = _skimage()
    return _perturb(images, scale, lambda i, b: _dilate(b, -amount * _nan0(_thickness_of(b, scale, morphology)) * scale / 2))


def shear(images, angle, *, scale: int = 4) -> np.ndarray:
    """Shear each digit so that an upright stroke leans by ``angle`` radians (one value or one per
    image; positive leans right): an upright digit's measured slant becomes ``angle``."""
    a = as_images(images)
    t = np.tan(np.broadcast_to(np.asarray(angle, dtype=np.float64), (a.shape[0],)))
    return _perturb(a, scale, lambda i, b: _shear_binary(b, float(t[i])))


def _nan0(x: float) -> float:
    return 0.0 if not np.isfinite(x) else x


def set_slant(images, target, *, scale: int = 4) -> np.ndarray:
    """Shear each digit so that its measured slant becomes ``target`` (rad, one value or one per
    image): the shear adds tan(target) - tan(slant) to the moments' ratio, which is exact."""
    a = as_images(images)
    target = np.broadcast_to(np.asarray(target, dtype=np.float64), (a.shape[0],))

    def change(i, b):
        s = _slant_of(b)
        return _shear_binary(b, float(np.tan(target[i]) - np.tan(_nan0(s))))
    return _perturb(a, scale, change)


def set_thickness(images, target, *, scale: int = 4) -> np.ndarray:
    """Dilate or erode each digit with the disk whose radius moves its measured thickness to
    ``target`` (px, one value or one per image): a disk of radius r changes the thickness by about
    2 r. A digit that would vanish is eroded to its last non-empty radius."""
    a = as_images(images)
    target = np.broadcast_to(np.asarray(target, dtype=np.float64), (a.shape[0],))
    morphology = _skimage()

    def change(i, b):
        now = _thickness_of(b, scale, morphology)
        if not np.isfinite(now):
            return b.astype(np.float64)
        radius = (target[i] - now) * scale / 2
        out = _dilate(b, radius)
        while out.max() < 1.0 and radius < 0:
            radius += 0.5
            out = _dilate(b, radius)
        return out
    return _perturb(a, scale, change)
