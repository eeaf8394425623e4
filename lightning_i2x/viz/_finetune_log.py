"""What a fine-tuning result gives every logger: scalars, the summary text, the confusion matrices."""

from __future__ import annotations

from ..finetune import FinetuneResult
from ._sinks import LogSink
from ._views import tag_name

__all__ = ["log_finetune"]


def log_finetune(sink, result: FinetuneResult, step: int, prefix: str = "i2x/finetune") -> None:
    """To every logger of ``sink`` (``lightning_i2x.sinks``): ``{prefix}/accuracy_before|after``,
    ``{prefix}/confusions_before|after/<a>_as_<b>`` (and ``<a>_<b>`` for both directions), the
    confusion matrices as images ``{prefix}/confusion_matrix_before|after``, the text ``{prefix}/summary``
    (which says why when nothing was trained, and "within noise" for a gain whose 95 % interval
    holds 0), ``{prefix}/<accuracy|targeting|control>_gain_low|high`` (those intervals)."""
    sink = LogSink.of(sink)
    sink.text(f"{prefix}/summary", result.to_markdown(), step)
    if result.skipped:
        return
    scalars = {f"{prefix}/accuracy_before": result.accuracy_before, f"{prefix}/accuracy_after": result.accuracy_after}
    if result.has_control:
        scalars[f"{prefix}/control_accuracy_after"] = result.control_accuracy_after
        scalars[f"{prefix}/targeting_gain"] = result.targeting_gain
    for which, g in result.gains.items():  # the paired 95 % intervals of the claimed gains
        scalars[f"{prefix}/{which}_gain_low"] = g.low
        scalars[f"{prefix}/{which}_gain_high"] = g.high
    if result.flagged is not None:
        scalars[f"{prefix}/flagged"] = result.flagged
    names = result.class_names
    for when, conf in (("before", result.confusions_before), ("after", result.confusions_after)):
        for (a, b), (ab, ba) in conf.items():
            na, nb = tag_name(names[a]), tag_name(names[b])
            scalars[f"{prefix}/confusions_{when}/{na}_as_{nb}"] = ab
            scalars[f"{prefix}/confusions_{when}/{nb}_as_{na}"] = ba
            scalars[f"{prefix}/confusions_{when}/{na}_{nb}"] = ab + ba
    for (a, b), n in result.removed_or_masked.items():
        scalars[f"{prefix}/removed_or_masked/{tag_name(names[a])}_{tag_name(names[b])}"] = n
    sink.scalars(scalars, step)
    if sink.takes_images:
        from ._figures import confusion_matrix, to_rgb  # matplotlib is loaded only when a figure is drawn

        for when, cm in (("before", result.confusion_matrix_before), ("after", result.confusion_matrix_after)):
            fig = confusion_matrix(cm, names, f"confusions {when} fine-tuning")
            sink.image(f"{prefix}/confusion_matrix_{when}", to_rgb(fig), step)
