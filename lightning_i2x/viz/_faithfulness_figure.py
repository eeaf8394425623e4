"""Drawing ``FaithfulnessMeasure``'s areas over the checkpoints (Agg Figure, no pyplot)."""

from __future__ import annotations

import numpy as np

from ._mpl import Figure, FigureCanvasAgg

__all__ = ["faithfulness_figure", "has_faithfulness", "plot_faithfulness"]

_CURVES = (("deletion_auc", "deletion (lower = more faithful)", "C3"), ("insertion_auc", "insertion (higher = more faithful)", "C0"))


def has_faithfulness(metrics: dict[str, np.ndarray], name: str = "faithfulness") -> bool:
    return any(f"{name}/{key}" in metrics and np.isfinite(metrics[f"{name}/{key}"]).any() for key, _, _ in _CURVES)


def faithfulness_figure(metrics: dict[str, np.ndarray], *, name: str = "faithfulness", dpi: int = 80) -> Figure:
    """``metrics`` as ``I2XRun.metrics()`` returns them; a figure saying so when none was recorded."""
    fig = Figure(figsize=(6.4, 3.0), dpi=dpi)
    FigureCanvasAgg(fig)
    if not has_faithfulness(metrics, name):
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no faithfulness measured (I2XCallback(measures=[FaithfulnessMeasure()]))", ha="center", va="center", fontsize=9)
        return fig
    ax = fig.add_axes((0.1, 0.16, 0.58, 0.72))
    for key, label, colour in _CURVES:
        for suffix, style, extra in (("", "-", ""), ("_random", "--", " random order")):
            values = metrics.get(f"{name}/{key}{suffix}")
            if values is None:
                continue
            t = np.arange(len(values))
            ok = np.isfinite(values)
            ax.plot(t[ok], values[ok], style, color=colour, marker="o", ms=3, lw=1.2, label=label.split(" (")[0] + extra if suffix else label)
    n = max(len(v) for k, v in metrics.items() if k.startswith(f"{name}/"))
    ax.set_xticks(range(n), [f"T{t}" for t in range(n)], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("area under the curve", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("faithfulness of the maps over the checkpoints (dashed: random order)", fontsize=9)
    return fig


def plot_faithfulness(run, *, name: str = "faithfulness", dpi: int = 80) -> Figure:
    """The areas ``FaithfulnessMeasure`` recorded in ``run``, over the checkpoints, as a matplotlib
    Figure (no pyplot): deletion and insertion solid, their random-order baselines dashed."""
    return faithfulness_figure(run.metrics(), name=name, dpi=dpi)
