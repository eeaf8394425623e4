"""Drawing a structured attention graph (``SAG.plot``): matplotlib's Figure without pyplot, laid
out by hand (rows = levels, roots on top), so drawing never switches the user's backend."""

from __future__ import annotations

import numpy as np
import torch

from ..perturb import pixel_mask
from ._mpl import Figure, FigureCanvasAgg, Line2D
from ._patches import display_images

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 1.25, 1.55, 0.3, 0.45, 0.25  # inches
ROOT_COLOUR, NODE_COLOUR = "#1f77b4", "#7f7f7f"


def _display(image) -> np.ndarray | None:
    if image is None:
        return None
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"image must be (C, H, W) (or (H, W)), got shape {x.shape}")
    return display_images(x[None].astype(np.float32))[0]


def plot_sag(graph, image=None, region_map=None, *, max_per_level: int = 8, dpi: int = 80, title: str | None = None) -> Figure:
    rgb = _display(image)
    rm = np.asarray(graph.region_map if region_map is None else region_map)
    if rgb is not None and rm.shape[0] > rgb.shape[0]:
        raise ValueError(f"region map of shape {rm.shape} is finer than the image {rgb.shape[:2]}")
    levels = [lvl[:max_per_level] for lvl in graph.levels()]
    hidden = sum(len(lvl) for lvl in graph.levels()) - sum(len(lvl) for lvl in levels)
    cols = max([len(lvl) for lvl in levels] + [1])
    fw = max(5.0, 2 * MARGIN + cols * NODE_W + (cols - 1) * GAP_X)  # wide enough for the two title lines
    head = 0.55
    fh = head + MARGIN + max(len(levels), 1) * (NODE_H + GAP_Y)
    fig = Figure(figsize=(fw, fh), dpi=dpi)
    FigureCanvasAgg(fig)
    if title is None:
        title = f"SAG, class {graph.label}: full image p={graph.full_probability:.2f}, blurred p={graph.baseline_probability:.2f}"
    fig.text(0.5, 1 - 0.12 / fh, title, ha="center", va="top", fontsize=9)
    fig.text(0.5, 1 - 0.34 / fh, f"roots: {len(graph.mses)} minimal sufficient explanations (>= {graph.fraction:.0%} of full p); "
             f"expanded above {graph.floor:.0%}" + (f"; {hidden} nodes not shown" if hidden else ""),
             ha="center", va="top", fontsize=7, color="#444444")
    if not levels:
        fig.text(0.5, 0.5, "no minimal sufficient explanation found", ha="center", va="center", fontsize=10)
        return fig
    pos: dict[tuple[int, ...], tuple[float, float, float, float]] = {}  # regions -> (x0, y0, x1, y1) inches
    for d, lvl in enumerate(levels):
        row_w = len(lvl) * NODE_W + (len(lvl) - 1) * GAP_X
        x = (fw - row_w) / 2
        top = fh - head - d * (NODE_H + GAP_Y)
        for node in lvl:
            pos[node.regions] = (x, top - NODE_H, x + NODE_W, top)
            _draw_node(fig, graph, node, rgb, rm, (x, top - NODE_H), fw, fh)
            x += NODE_W + GAP_X
    for e in graph.edges:
        if e.parent in pos and e.child in pos:
            px0, py0, px1, _ = pos[e.parent]
            cx0, _, cx1, cy1 = pos[e.child]
            a, b = ((px0 + px1) / 2, py0), ((cx0 + cx1) / 2, cy1)
            fig.add_artist(Line2D([a[0] / fw, b[0] / fw], [a[1] / fh, b[1] / fh], color="#999999", linewidth=0.8,
                                  transform=fig.transFigure))
            fig.text((0.35 * a[0] + 0.65 * b[0]) / fw, (0.35 * a[1] + 0.65 * b[1]) / fh, "-" + graph.region_name(e.removed),
                     fontsize=5.5, color="#aa3333", ha="center", va="center",
                     bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    return fig


def _draw_node(fig, graph, node, rgb, rm, corner, fw, fh) -> None:
    x0, y0 = corner
    label_h = 0.38
    ax = fig.add_axes(((x0 + 0.05) / fw, (y0 + label_h) / fh, (NODE_W - 0.1) / fw, (NODE_H - label_h - 0.05) / fh))
    colour = ROOT_COLOUR if node.is_root else NODE_COLOUR
    if rgb is not None:
        shown = pixel_mask(np.isin(rm, node.regions), rgb.shape[:2])
        thumb = np.where(shown[..., None], rgb, 0.15 * rgb + 0.1)
        ax.imshow(thumb, interpolation="nearest")
    else:
        ax.imshow(np.isin(rm, node.regions).astype(float), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_edgecolor(colour)
        s.set_linewidth(2.0 if node.is_root else 0.8)
    rel = node.probability / graph.full_probability if graph.full_probability > 0 else float("nan")
    names = graph.describe(node.regions)
    if len(names) > 22:
        names = names[:21] + "."
    fig.text((x0 + NODE_W / 2) / fw, (y0 + label_h - 0.04) / fh, names, ha="center", va="top", fontsize=6)
    fig.text((x0 + NODE_W / 2) / fw, (y0 + 0.04) / fh, f"p={node.probability:.2f} ({rel:.0%})", ha="center", va="bottom",
             fontsize=7, color=colour, fontweight="bold" if node.is_root else "normal")
