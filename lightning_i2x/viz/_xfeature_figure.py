"""One class's x-feature panel: each x-feature's top probe images under its GradCAM map, and the
contribution bars of a few probe images, which sum with the head's bias to the explained score."""

from __future__ import annotations

import numpy as np

from ._mpl import Figure, FigureCanvasAgg
from ._patches import display_images

__all__ = ["plot_xfeatures"]


def _upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of an (h, w) map to the image size (the panel is a sketch)."""
    rows = (np.arange(size[0]) * cam.shape[0] // size[0]).clip(0, cam.shape[0] - 1)
    cols = (np.arange(size[1]) * cam.shape[1] // size[1]).clip(0, cam.shape[1] - 1)
    return cam[rows][:, cols]


def plot_xfeatures(panel, images: np.ndarray | None, class_name: str, *, bar_images: int = 3, dpi: int = 80) -> Figure:
    """The panel of a ``StoredXFeatures`` (or ``ClassXFeatures``): rows = x-features (top images with
    their saliency), then one row of contribution bars for the ``bar_images`` probe images with the
    highest network score. ``images``: the run's probe images (N, C, H, W), or None (maps only)."""
    n_x, k = panel.top_images.shape
    cols = max(k, bar_images)
    fig = Figure(figsize=(1.5 * cols + 0.8, 1.5 * (n_x + 1) + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.suptitle(f"class {class_name}: {n_x} x-feature{'s' if n_x != 1 else ''}, held-out R\u00b2 = {panel.r2:.3f}", fontsize=9)
    grid = fig.add_gridspec(n_x + 1, cols)
    for f in range(n_x):
        idx = panel.top_images[f]
        rgb = display_images(np.asarray(images[idx], dtype=np.float32)) if images is not None else None
        for j in range(k):
            ax = fig.add_subplot(grid[f, j])
            cam = panel.saliency[f, j]
            if rgb is not None:
                ax.imshow(rgb[j])
                ax.imshow(_upsample(cam, rgb.shape[1:3]), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            else:
                ax.imshow(cam, cmap="jet", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"x{f + 1}", fontsize=8)
            ax.set_title(f"#{int(idx[j])}", fontsize=7)
    order = np.argsort(-np.asarray(panel.score), kind="stable")[:bar_images]
    explained = panel.explained
    names = [f"x{f + 1}" for f in range(n_x)] + ["bias"]
    for j, i in enumerate(order):
        ax = fig.add_subplot(grid[n_x, j])
        values = [*np.asarray(panel.contributions[i], dtype=np.float64), panel.bias]
        ax.bar(range(len(values)), values, color=["#1f77b4"] * n_x + ["#7f7f7f"])
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(names, fontsize=6)
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title(f"#{int(i)}: {explained[i]:.2f} (net {float(panel.score[i]):.2f})", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig
