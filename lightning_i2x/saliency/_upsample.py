"""One upsampler for saliency maps, shared by the I-GOS optimiser and the deletion/insertion metric,
so a mask is scored on the same pixel grid it was optimised on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["upsample_maps"]


def upsample_maps(maps: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) or (B, C, h, w) maps bilinearly resized to ``image_size``, ``align_corners=False``
    (pixel centres, as image resizing and pytorch-grad-cam's resize do; the I-GOS authors' code uses
    ``UpsamplingBilinear2d``, i.e. aligned corners, which shifts a 7 x 7 mask by up to 1.3 px on a 28 px image)."""
    squeeze = maps.ndim == 3
    x = maps[:, None] if squeeze else maps
    up = F.interpolate(x, size=tuple(int(s) for s in image_size), mode="bilinear", align_corners=False)
    return up[:, 0] if squeeze else up
