"""Drawing a ``TwinResult`` (``lightning_i2x.twin``): the causal graph, the effects on the logit
and the counterfactual strips (Agg Figures, no pyplot)."""

from __future__ import annotations

import numpy as np

from ._mpl import Circle, FancyArrowPatch, Figure, FigureCanvasAgg

__all__ = ["twin_graph_figure", "twin_effects_figure", "twin_counterfactuals_figure"]


def _figure(size, dpi):
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def twin_graph_figure(result, *, dpi: int = 80):
    """The nodes on a circle (concepts blue, residual latents grey, the logit red), each edge an
    arrow labelled with its coefficient; nodes without an edge are left out."""
    fig = _figure((5.0, 4.2), dpi)
    ax = fig.add_axes((0, 0, 1, 0.9))
    ax.set_axis_off()
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    g = np.asarray(result.graph)
    used = [i for i in range(len(result.nodes)) if g[i].any() or g[:, i].any() or result.nodes[i] in result.concepts
            or i == len(result.nodes) - 1]
    angle = {i: np.pi / 2 - 2 * np.pi * n / len(used) for n, i in enumerate(used)}
    pos = {i: (np.cos(a), np.sin(a)) for i, a in angle.items()}
    for i in used:
        name = result.nodes[i]
        colour = "#c44e52" if i == len(result.nodes) - 1 else ("#4c72b0" if name in result.concepts else "#999999")
        ax.add_patch(Circle(pos[i], 0.2, color=colour, alpha=0.9, zorder=2))
        ax.text(*pos[i], name, ha="center", va="center", fontsize=7, color="white", zorder=3, weight="bold")
    for a, b in zip(*np.nonzero(g)):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        arrow = FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, shrinkA=14, shrinkB=14,
                                color="#333333", lw=1.0 + min(abs(g[a, b]), 3.0) / 2, zorder=1)
        ax.add_patch(arrow)
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"{g[a, b]:+.2g}", fontsize=7, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8), zorder=4)
    fig.suptitle(f"twin causal graph (NOTEARS), logit of class {result.target}", fontsize=9)
    return fig


def twin_effects_figure(result, *, dpi: int = 80):
    """Per concept, the logit's change per unit: direct and mediated from the structural
    equations, and the total the classifier shows on decoded counterfactuals."""
    fig = _figure((6.4, 3.0), dpi)
    ax = fig.add_axes((0.11, 0.2, 0.5, 0.68))
    n = len(result.concepts)
    x = np.arange(n)
    direct = [result.effects[c]["direct"] for c in result.concepts]
    mediated = [result.effects[c]["mediated"] for c in result.concepts]
    decoded = [result.effects[c]["decoded_total"] for c in result.concepts]
    ax.bar(x - 0.2, direct, 0.4, color="#4c72b0", label="direct (equations)")
    ax.bar(x - 0.2, mediated, 0.4, bottom=direct, color="#8fb0d9", label="mediated (equations)")
    ax.bar(x + 0.2, decoded, 0.4, color="#c44e52", label="total (decoded, classified)")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, result.concepts, fontsize=8)
    ax.set_ylabel("logit change per unit", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"effects on the logit of class {result.target}", fontsize=9)
    return fig


def twin_counterfactuals_figure(result, *, dpi: int = 80):
    """One block per concept: rows of decoded counterfactual images for ``do(concept = v)``,
    each titled with v, its re-measured value and the classifier's logit."""
    blocks = [(c, result.counterfactuals[c]) for c in result.concepts]
    rows = sum(len(cf["images"]) for _, cf in blocks)
    cols = max(len(cf["values"]) for _, cf in blocks)
    height = 1.2 * rows + 0.4 * len(blocks) + 0.5
    fig = _figure((1.1 * cols + 0.6, height), dpi)
    grid = fig.add_gridspec(rows, cols, hspace=0.7, wspace=0.1, top=1 - 0.75 / height, bottom=0.02, left=0.02, right=0.98)
    r = 0
    for c, cf in blocks:
        for s in range(len(cf["images"])):
            for v in range(len(cf["values"])):
                ax = fig.add_subplot(grid[r, v])
                ax.imshow(cf["images"][s][v], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                top = f"do({c}={cf['values'][v]:.2g})\n" if s == 0 else ""
                ax.set_title(f"{top}{cf['measured'][s][v]:.2g}, logit {cf['logit'][s][v]:+.1f}", fontsize=6)
            r += 1
    fig.suptitle("counterfactuals: intervention, re-measured value, classifier logit", fontsize=9)
    return fig
