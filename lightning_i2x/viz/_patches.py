"""From feature locations back to pixels: how a prototype is shown to people (Step 1, item 5 of the method).

A location (i, j) of an h x w feature map covers the input cell
``[i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)``; a patch adds ``context`` cells on each side, because a
convolution's receptive field reaches past its own cell. The images come from the run
(``store_probe_images``), so nothing here needs the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["display_images", "patch_box", "nearest_locations", "extract_patch", "prototype_patches"]


def display_images(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) normalised model inputs as (N, H, W, 3) floats in [0, 1], each image min-max
    scaled (the normalisation used for training is not known here). One or three channels are
    shown as they are, any other count as the channel mean."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    if x.shape[1] != 3:
        x = x.mean(axis=1, keepdims=True).repeat(3, axis=1)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    span = x.max(axis=(1, 2, 3), keepdims=True) - lo
    x = (x - lo) / np.where(span > 0, span, 1)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def patch_box(i: int, j: int, feature_shape: tuple[int, int], image_shape: tuple[int, int], context: float = 1.0) -> tuple[int, int, int, int]:
    """(top, left, height, width) in pixels of the patch shown for feature location (i, j), centred
    on its cell; the size is the same for every location, so it may reach past the image border."""
    (h, w), (big_h, big_w) = feature_shape, image_shape
    cell_h, cell_w = big_h / h, big_w / w
    size_h = max(1, round((1 + 2 * context) * cell_h))
    size_w = max(1, round((1 + 2 * context) * cell_w))
    top = round((i + 0.5) * cell_h - size_h / 2)
    left = round((j + 0.5) * cell_w - size_w / 2)
    return top, left, size_h, size_w


def nearest_locations(assignment: np.ndarray, distances: np.ndarray | None, k: int, n: int, saliency: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """Up to n (sample, i, j) locations assigned to prototype k, nearest its centroid first, at most
    one per sample (n crops of one image would show the same stroke n times).

    Without distances (runs recorded before they were stored) the most salient locations of the
    prototype stand in for the nearest ones; with neither, the first locations in probe order.
    """
    a = np.asarray(assignment)
    mask = a == k
    if not mask.any() or n < 1:
        return []
    score = distances if distances is not None else (None if saliency is None else -np.asarray(saliency, dtype=np.float64))
    idx = np.flatnonzero(mask.reshape(-1))
    if score is not None:
        idx = idx[np.argsort(np.asarray(score).reshape(-1)[idx], kind="stable")]
    sample = idx // (a.shape[1] * a.shape[2])
    _, first = np.unique(sample, return_index=True)  # position of each sample's best location
    best = idx[np.sort(first)][:n]
    out = []
    for flat in best:
        s, rest = divmod(int(flat), a.shape[1] * a.shape[2])
        out.append((s, *divmod(rest, a.shape[2])))
    return out


def extract_patch(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The (height, width, 3) crop of an (H, W, 3) display image, zero (black) past its border."""
    top, left, size_h, size_w = box
    big_h, big_w = image.shape[:2]
    out = np.zeros((size_h, size_w, image.shape[2]), dtype=image.dtype)
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + size_h, big_h), min(left + size_w, big_w)
    if t1 > t0 and l1 > l0:
        out[t0 - top : t1 - top, l0 - left : l1 - left] = image[t0:t1, l0:l1]
    return out


def prototype_patches(run, prototypes: Sequence[int] | None = None, n: int = 8, context: float = 1.0) -> dict[int, tuple[np.ndarray, list[tuple[int, int, int]]]]:
    """For each prototype id (default all): its patches ((m, ph, pw, 3) floats in [0, 1], m <= n)
    and the (sample, i, j) locations they come from, read from the run's stored probe images."""
    if run.images is None:
        raise ValueError(f"{run.path} holds no probe images (store_probe_images=False, or the probe was over 64 MiB)")
    display = display_images(run.images)
    big = display.shape[1:3]
    assignment, distances = run.assignment(), run.distances()
    saliency = run.cams()[run.reference] if distances is None else None
    size = patch_box(0, 0, run.feature_shape, big, context)[2:]
    out = {}
    for k in range(run.num_prototypes) if prototypes is None else prototypes:
        locs = nearest_locations(assignment, distances, int(k), n, saliency)
        patches = [extract_patch(display[s], patch_box(i, j, run.feature_shape, big, context)) for s, i, j in locs]
        out[int(k)] = (np.stack(patches) if patches else np.zeros((0, *size, 3), np.float32), locs)
    return out
