"""Presentation, a leaf nothing computing imports: the figures (matplotlib without pyplot), the
prototype patches, what every logger gets at each record (tags, scalars, text, images), the sinks,
the HTML report and the fine-tuning result's logging.

The figure modules (and with them matplotlib) load on first use: the figure functions and the
report below are PEP 562 lazy attributes, so ``from lightning_i2x.viz import evolution_grid`` works
while ``import lightning_i2x`` and a fit with ``views=False`` never import matplotlib."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._finetune_log import log_finetune
from ._patches import display_images, extract_patch, nearest_locations, patch_box, prototype_patches
from ._sinks import DeferredSink, LogSink
from ._views import (
    TAG_BETA,
    TAG_CHANNEL_CONTRIBUTIONS,
    TAG_CHANNEL_GALLERY,
    TAG_CHANNEL_WEIGHTS,
    TAG_CLASS_TEXT,
    TAG_CONFIDENCE,
    TAG_EVOLUTION,
    TAG_GALLERY,
    TAG_GRAPH,
    TAG_INTENSITY,
    TAG_OVERLAY,
    TAG_PAIR,
    TAG_SAG,
    TAG_SUMMARY,
    TAG_TRUE_CONFIDENCE,
    TAG_TWIN,
    TAG_UNCERTAIN,
    TAG_XFEATURES,
    DrawBudget,
    custom_scalars_layout,
    drawn_classes,
    drawn_pairs,
    log_figures,
    log_summary,
    log_views,
    summary_scalars,
    tag_name,
)

__all__ = [
    "prototype_gallery", "evolution_grid", "checkpoint_graph", "confused_pair", "ridge_heatmap", "confidence_curves",
    "saliency_overlays", "confusion_matrix", "to_rgb", "to_png", "plot_sag", "faithfulness_figure", "has_faithfulness",
    "plot_faithfulness", "channel_gallery", "contribution_bars", "channel_weights", "twin_graph_figure", "twin_effects_figure",
    "twin_counterfactuals_figure", "display_images", "patch_box", "nearest_locations", "extract_patch", "prototype_patches",
    "LogSink", "DeferredSink", "log_views", "log_summary", "log_figures", "summary_scalars", "custom_scalars_layout", "DrawBudget",
    "drawn_classes", "drawn_pairs", "tag_name", "build_report", "write_report", "log_finetune",
    "TAG_TRUE_CONFIDENCE", "TAG_UNCERTAIN", "TAG_CONFIDENCE", "TAG_INTENSITY", "TAG_SUMMARY", "TAG_CLASS_TEXT",
    "TAG_GALLERY", "TAG_BETA", "TAG_EVOLUTION", "TAG_GRAPH", "TAG_OVERLAY", "TAG_PAIR", "TAG_SAG",
    "TAG_CHANNEL_GALLERY", "TAG_CHANNEL_WEIGHTS", "TAG_CHANNEL_CONTRIBUTIONS", "TAG_TWIN", "TAG_XFEATURES", "plot_xfeatures",
]

# name -> the module of this package that defines it, imported when the name is first used
_LAZY = {
    **dict.fromkeys(["checkpoint_graph", "confidence_curves", "confused_pair", "confusion_matrix", "evolution_grid",
                     "prototype_gallery", "ridge_heatmap", "saliency_overlays", "to_png", "to_rgb"], "_figures"),
    **dict.fromkeys(["faithfulness_figure", "has_faithfulness", "plot_faithfulness"], "_faithfulness_figure"),
    "plot_sag": "_sag_figure",
    **dict.fromkeys(["channel_gallery", "contribution_bars", "channel_weights"], "_channels_figure"),
    **dict.fromkeys(["twin_graph_figure", "twin_effects_figure", "twin_counterfactuals_figure"], "_twin_figure"),
    "plot_xfeatures": "_xfeature_figure",
    **dict.fromkeys(["build_report", "write_report"], "_report"),
}

if TYPE_CHECKING:  # the lazy names, for type checkers and the API docs
    from ._channels_figure import channel_gallery, channel_weights, contribution_bars
    from ._faithfulness_figure import faithfulness_figure, has_faithfulness, plot_faithfulness
    from ._figures import (
        checkpoint_graph,
        confidence_curves,
        confused_pair,
        confusion_matrix,
        evolution_grid,
        prototype_gallery,
        ridge_heatmap,
        saliency_overlays,
        to_png,
        to_rgb,
    )
    from ._report import build_report, write_report
    from ._sag_figure import plot_sag
    from ._twin_figure import twin_counterfactuals_figure, twin_effects_figure, twin_graph_figure
    from ._xfeature_figure import plot_xfeatures


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later uses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
