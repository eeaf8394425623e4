"""Presentation, a leaf nothing computing imports: the figures (matplotlib without pyplot), the
prototype patches, what every logger gets at each record (tags, scalars, text, images), the sinks,
the HTML report and the fine-tuning result's logging."""

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
from ._finetune_log import log_finetune
from ._patches import display_images, extract_patch, nearest_locations, patch_box, prototype_patches
from ._report import build_report, write_report
from ._sag_figure import plot_sag
from ._sinks import LogSink
from ._views import (
    TAG_BETA,
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
    TAG_UNCERTAIN,
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
    "plot_faithfulness", "display_images", "patch_box", "nearest_locations", "extract_patch", "prototype_patches",
    "LogSink", "log_views", "log_summary", "log_figures", "summary_scalars", "custom_scalars_layout", "DrawBudget",
    "drawn_classes", "drawn_pairs", "tag_name", "build_report", "write_report", "log_finetune",
    "TAG_TRUE_CONFIDENCE", "TAG_UNCERTAIN", "TAG_CONFIDENCE", "TAG_INTENSITY", "TAG_SUMMARY", "TAG_CLASS_TEXT",
    "TAG_GALLERY", "TAG_BETA", "TAG_EVOLUTION", "TAG_GRAPH", "TAG_OVERLAY", "TAG_PAIR", "TAG_SAG",
]
