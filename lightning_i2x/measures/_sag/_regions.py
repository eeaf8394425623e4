"""SAG's regions and defaults: a prototype assignment or a coarse grid, upsampled to pixel masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...perturb import hiding_sigma, pixel_mask

__all__ = ["Regions", "DEFAULT_FRACTION", "DEFAULT_BEAM_WIDTH", "DEFAULT_MAX_ROOTS", "DEFAULT_MAX_OVERLAP", "DEFAULT_MAX_MSES",
           "DEFAULT_FLOOR", "DEFAULT_MAX_CHILDREN", "DEFAULT_MAX_NODES", "DEFAULT_BLUR", "DEFAULT_SIZE_SLACK",
           "sag_blur_sigma", "default_grid_size", "grid_regions", "region_map", "region_masks"]

Regions = Any  # "grid" | (h, w) integer array / tensor

# the authors' defaults (main_generate_sag.py)
DEFAULT_FRACTION = 0.9
DEFAULT_BEAM_WIDTH = 3
DEFAULT_MAX_ROOTS = 10
DEFAULT_MAX_OVERLAP = 1
DEFAULT_MAX_MSES = 3
DEFAULT_FLOOR = 0.4
DEFAULT_MAX_CHILDREN = 3
DEFAULT_MAX_NODES = 40
# ours, chosen by benchmarks/sag.py (results in benchmarks/results/sag-cpu.md)
DEFAULT_BLUR = 0.2
DEFAULT_SIZE_SLACK = 2


# -- regions ------------------------------------------------------------------------------------------
def sag_blur_sigma(image_size: tuple[int, int]) -> float:
    """The blur that hides what is not shown: sigma = ``DEFAULT_BLUR`` (0.2) x the image's side
    (``perturb.hiding_sigma``), near the authors' 50 px on 224 px images (0.22). A lighter blur (half a
    region cell) leaves a digit legible: the demo CNN kept most of its confidence on the fully
    blurred image, so the empty set was "sufficient" and no region mattered."""
    return hiding_sigma(image_size, DEFAULT_BLUR)


def default_grid_size(image_size: tuple[int, int]) -> int:
    """SAG's 7 x 7 grid (32 px cells on 224 px images) for images of 112 px or more; 4 x 4 below,
    so cells stay 7-8 px on 28-32 px images (a 7 x 7 grid would cut an MNIST digit into 4 px cells
    too small to carry a cue)."""
    return 7 if min(image_size) >= 112 else 4


def grid_regions(image_size: tuple[int, int], grid_size: int | None = None) -> np.ndarray:
    """A (g, g) region map numbering the cells of a g x g grid row by row (0 .. g*g-1)."""
    g = default_grid_size(image_size) if grid_size is None else int(grid_size)
    if g < 1 or g > min(image_size):
        raise ValueError(f"grid_size must be between 1 and the image side {min(image_size)}, got {g}")
    return np.arange(g * g, dtype=np.int64).reshape(g, g)


def region_map(regions: Regions, image_size: tuple[int, int], grid_size: int | None) -> tuple[np.ndarray, str]:
    if isinstance(regions, str):
        if regions != "grid":
            raise ValueError(f'regions must be "grid" or an integer (h, w) region map, got {regions!r}')
        return grid_regions(image_size, grid_size), "grid"
    arr = regions.detach().cpu().numpy() if isinstance(regions, torch.Tensor) else np.asarray(regions)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"a region map holds integer region ids (e.g. a prototype assignment), got dtype {arr.dtype}; "
                         'pass regions="grid" for a grid')
    if arr.ndim != 2:
        raise ValueError(f"a region map is one (h, w) integer array per image, got shape {arr.shape}")
    if arr.size == 0 or not (arr >= 0).any():
        raise ValueError(f"the region map of shape {arr.shape} holds no region (ids >= 0); give at least one region")
    h, w = arr.shape
    if h > image_size[0] or w > image_size[1]:
        raise ValueError(f"region map of shape {arr.shape} is finer than the image ({image_size[0]} x {image_size[1]}): "
                         "give it at feature or pixel resolution, at most the image's size")
    return arr.astype(np.int64), "map"


def region_masks(region_map: np.ndarray, image_size: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """The region ids (ascending, negative ids left out) and their (R, H, W) pixel masks."""
    ids = [int(v) for v in np.unique(region_map) if v >= 0]
    masks = pixel_mask(region_map[None] == np.asarray(ids)[:, None, None], image_size)
    return ids, masks


