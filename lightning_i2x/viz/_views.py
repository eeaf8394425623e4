"""What the callback logs at each recorded checkpoint, under one ``i2x/`` prefix.

``log_views(sink, run, explanation, step, options)`` writes to a ``LogSink``: every Lightning
logger of the trainer (scalars to all of them, CSVLogger's ``metrics.csv`` included; text and
images to those that take them, see ``lightning_i2x.sinks``), or a raw ``SummaryWriter``:

| kind | tag | what |
|---|---|---|
| scalar | ``i2x/true_class_confidence`` | mean probability of the true class over the probe |
| scalar | ``i2x/uncertain_prototypes`` | number of uncertain prototypes |
| scalar | ``i2x/confidence/<class>`` | mean true-class probability of the class's probe samples |
| scalar | ``i2x/intensity/P-<k>`` | mean intensity, where present, of the top prototypes |
| text | ``i2x/summary`` | the whole explanation as markdown |
| text | ``i2x/summary/<class>`` | one class: shared, specialised, edges, uncertain, learning order |
| image | ``i2x/gallery`` | each prototype as its nearest input patches |
| image | ``i2x/beta`` | heat map of the latest interval's ridge coefficients |
| image | ``i2x/class<n>/evolution`` | Fig. 3: prototypes x intervals, raised or lowered, against whom |
| image | ``i2x/class<n>/graph`` | Fig. 4: the annotated checkpoint graph |
| image | ``i2x/class<n>/overlay`` | the saliency maps (the run's `cam`) over probe images, salient prototypes outlined |
| image | ``i2x/pair<n>`` | Fig. 5: a confused pair's prototypes, uncertain ones outlined |
| image | ``i2x/class<n>/sag`` | with ``SAGMeasure``: the structured attention graph of the class's stored probe image |
| image | ``i2x/channels/gallery``, ``i2x/channels/weights``, ``i2x/channels/contributions<n>`` | with ``InfoDisentMeasure``: each EPIC-unmixed channel's top patches, the channel-to-class weights, one probe image per drawn class as signed contribution bars |
| image | ``i2x/twin/graph``, ``i2x/twin/effects``, ``i2x/twin/counterfactuals`` | with ``TwinMeasure``: the twin's causal graph, the effects on the logit, the counterfactual strips |
| image | ``i2x/class<n>/xfeatures`` | with ``XFeatureMeasure``: the class's x-features (top images, saliency, contribution bars) |

plus a custom-scalars layout (the "CUSTOM SCALARS" dashboard) grouping the scalars.

Class views go to numbered slots (``class1`` .. ``class<max_classes>``, ``pair1`` ..), each image
titled with its class or pair: the dashboard keeps a fixed set of cards, one row of three per class,
while the classes worth drawing change during training (pin them with ``classes``). Class names in
tags are made tag-safe (``tag_name``). The interval views need two checkpoints, the gallery and the
overlays the run's probe images; what cannot be drawn yet is left out. A stored SAG
(``lightning_i2x.sag.SAGMeasure``) goes to the slot of its class, or after the drawn classes when
its class is not drawn now; so do stored x-feature panels (``XFeatureMeasure``).
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

from ..analysis import SALIENCY_THRESHOLD, select_classes, select_pairs, select_prototypes
from ..measures import stored_sags, stored_twin
from ..options import ViewOptions
from ..xfeatures import PANEL_ATTACHMENT, stored_xfeatures
from ._sinks import LogSink

T = TypeVar("T")

__all__ = ["ViewOptions", "DrawBudget", "log_views", "log_summary", "log_figures", "summary_scalars", "custom_scalars_layout", "drawn_classes", "drawn_pairs", "tag_name",
           "TAG_TRUE_CONFIDENCE", "TAG_UNCERTAIN", "TAG_CONFIDENCE", "TAG_INTENSITY", "TAG_SUMMARY", "TAG_CLASS_TEXT",
           "TAG_GALLERY", "TAG_BETA", "TAG_EVOLUTION", "TAG_GRAPH", "TAG_OVERLAY", "TAG_PAIR", "TAG_SAG",
           "TAG_CHANNEL_GALLERY", "TAG_CHANNEL_WEIGHTS", "TAG_CHANNEL_CONTRIBUTIONS", "TAG_TWIN", "TAG_XFEATURES"]

TAG_TRUE_CONFIDENCE = "i2x/true_class_confidence"
TAG_UNCERTAIN = "i2x/uncertain_prototypes"
TAG_CONFIDENCE = "i2x/confidence/{cls}"
TAG_INTENSITY = "i2x/intensity/P-{k}"
TAG_SUMMARY = "i2x/summary"
TAG_CLASS_TEXT = "i2x/summary/{cls}"
TAG_GALLERY = "i2x/gallery"
TAG_BETA = "i2x/beta"
TAG_EVOLUTION = "i2x/class{slot}/evolution"
TAG_GRAPH = "i2x/class{slot}/graph"
TAG_OVERLAY = "i2x/class{slot}/overlay"
TAG_PAIR = "i2x/pair{slot}"
TAG_SAG = "i2x/class{slot}/sag"
TAG_CHANNEL_GALLERY = "i2x/channels/gallery"
TAG_CHANNEL_WEIGHTS = "i2x/channels/weights"
TAG_CHANNEL_CONTRIBUTIONS = "i2x/channels/contributions{slot}"
TAG_TWIN = "i2x/twin/{view}"
TAG_XFEATURES = "i2x/class{slot}/xfeatures"


def tag_name(name: str) -> str:
    """A class name as a tag component: letters, digits, '.', '-' and '_' only."""
    return re.sub(r"[^\w.-]+", "_", str(name)) or "_"


def _latest(run) -> np.ndarray | None:
    return run.latest_confidences() if run.num_checkpoints else None


def drawn_pairs(run, expl, options: ViewOptions) -> list[tuple[int, int]]:
    """The confused pairs the views draw (``analysis.select_pairs`` with ``options``)."""
    return select_pairs(expl, _latest(run), options.max_pairs)


def drawn_classes(run, expl, options: ViewOptions) -> list[int]:
    """The classes the views draw (``analysis.select_classes`` with ``options``; pinned classes first)."""
    return select_classes(expl, _latest(run), classes=options.classes, max_classes=options.max_classes, max_pairs=options.max_pairs)


def custom_scalars_layout() -> dict:
    """The "CUSTOM SCALARS" dashboard: one chart per family of i2x scalars."""
    return {
        "i2x": {
            "confidence per class": ["Multiline", [r"i2x/confidence/.*", TAG_TRUE_CONFIDENCE]],
            "intensity of the top prototypes": ["Multiline", [r"i2x/intensity/.*"]],
            "uncertain prototypes": ["Multiline", [TAG_UNCERTAIN]],
        }
    }


def log_views(sink, run, expl, step: int, options: ViewOptions | None = None) -> None:
    """Write every view of the run's current explanation at ``step``: the scalars and text, then
    (with ``options.figures``) the images. ``sink``: a ``LogSink``, a logger, a writer or a list."""
    options = options or ViewOptions()
    sink = LogSink.of(sink)
    log_summary(sink, run, expl, step, options)
    if options.figures:
        log_figures(sink, run, expl, step, options)


def summary_scalars(run, expl, options: ViewOptions) -> dict[str, float]:
    """The scalars of one record: true-class confidence overall and per class, the number of
    uncertain prototypes, and the mean intensity (where present) of the top prototypes."""
    names = run.class_names
    true = run.latest_confidences()[np.arange(run.num_probe), run.labels]
    out = {TAG_TRUE_CONFIDENCE: float(true.mean()), TAG_UNCERTAIN: float(len(expl.uncertain))}
    for c in range(run.num_classes):
        members = run.labels == c
        if members.any():
            out[TAG_CONFIDENCE.format(cls=tag_name(names[c]))] = float(true[members].mean())
    intensity = expl.intensities[-1] if expl.intensities is not None else run.intensities()[-1]
    for k in select_prototypes(expl, options.scalar_prototypes):
        present = intensity[:, k][np.isfinite(intensity[:, k])]
        if present.size:
            out[TAG_INTENSITY.format(k=k)] = float(present.mean())
    return out


def log_summary(sink, run, expl, step: int, options: ViewOptions) -> None:
    """The cheap part of the views: scalars, the custom-scalars layout and the markdown text."""
    sink = LogSink.of(sink)
    sink.layout(custom_scalars_layout())  # tiny; rewritten so any event file has it
    sink.scalars(summary_scalars(run, expl, options), step)
    texts = range(len(run.class_names)) if len(run.class_names) <= options.max_text_classes else drawn_classes(run, expl, options)
    summary = expl.to_markdown()
    if len(texts) < len(run.class_names):
        summary += (f"\nPer-class text for {len(texts)} of {len(run.class_names)} classes (the drawn ones): the run has more "
                    f"than ViewOptions.max_text_classes = {options.max_text_classes}.\n")
    sink.text(TAG_SUMMARY, summary, step)
    for c in texts:
        sink.text(TAG_CLASS_TEXT.format(cls=tag_name(run.class_names[c])), expl.class_markdown(c), step)


def log_figures(sink, run, expl, step: int, options: ViewOptions) -> None:
    """The images, to the loggers that take images. Views that need probe images are left out,
    with a warning, when the run holds none."""
    sink = LogSink.of(sink)
    if not sink.takes_images:
        return
    from . import _figures as plots  # matplotlib is loaded only when a figure is drawn

    def image(tag, fig):
        sink.image(tag, plots.to_rgb(fig), step)

    classes = drawn_classes(run, expl, options)
    has_images = run.images is not None
    if not has_images and (options.gallery_patches or options.overlay_samples):
        warnings.warn(f"I2X views: {run.path} holds no probe images (store_images=False or a probe over 64 MiB): "
                      "the prototype gallery and the saliency overlays are left out", RuntimeWarning, stacklevel=2)
    if has_images and options.gallery_patches and options.gallery_prototypes:
        image(TAG_GALLERY, plots.prototype_gallery(run, select_prototypes(expl, options.gallery_prototypes),
                                                   n=options.gallery_patches, dpi=options.dpi))
    if expl.num_intervals:
        image(TAG_BETA, plots.ridge_heatmap(expl, dpi=options.dpi))
    thumbs = run if has_images else None
    threshold = expl.params.get("saliency_threshold", SALIENCY_THRESHOLD)
    for slot, c in enumerate(classes, 1):
        if expl.num_intervals:
            image(TAG_EVOLUTION.format(slot=slot), plots.evolution_grid(expl, c, run=thumbs, max_rows=options.max_rows, dpi=options.dpi))
            image(TAG_GRAPH.format(slot=slot), plots.checkpoint_graph(expl, c, dpi=options.dpi))
        if has_images and options.overlay_samples:
            image(TAG_OVERLAY.format(slot=slot), plots.saliency_overlays(run, c, samples=options.overlay_samples, dpi=options.dpi,
                                                                         threshold=threshold))
    if expl.num_intervals:
        for slot, (a, b) in enumerate(drawn_pairs(run, expl, options), 1):
            image(TAG_PAIR.format(slot=slot), plots.confused_pair(expl, a, b, run=thumbs, max_rows=options.max_rows, dpi=options.dpi))
    if has_images and "sag" in run.attachments:
        _log_sags(image, run, classes, options)
    if "infodisent" in run.attachments:
        _log_channels(image, run, classes, options, has_images)
    if "twin" in run.attachments:
        _log_twin(image, run, options)
    if PANEL_ATTACHMENT in run.attachments:
        _log_xfeatures(image, run, classes, options)


def _log_channels(image, run, classes: list[int], options: ViewOptions, has_images: bool) -> None:
    """What an ``InfoDisentMeasure`` stored: the channel gallery, the channel-to-class weights, and
    the contribution bars of the first probe image of each drawn class."""
    from . import _channels_figure as channels

    if has_images:
        image(TAG_CHANNEL_GALLERY, channels.channel_gallery(run, n=min(6, max(options.gallery_patches, 1)), dpi=options.dpi))
    image(TAG_CHANNEL_WEIGHTS, channels.channel_weights(run, dpi=options.dpi))
    for slot, c in enumerate(classes, 1):
        members = np.flatnonzero(run.labels == c)
        if members.size:
            image(TAG_CHANNEL_CONTRIBUTIONS.format(slot=slot), channels.contribution_bars(run, int(members[0]), dpi=options.dpi))


def _log_twin(image, run, options: ViewOptions) -> None:
    """The three views of the twin a ``TwinMeasure`` stored."""
    from . import _twin_figure as twin_plots

    result = stored_twin(run)
    for view, draw in (("graph", twin_plots.twin_graph_figure), ("effects", twin_plots.twin_effects_figure),
                       ("counterfactuals", twin_plots.twin_counterfactuals_figure)):
        image(TAG_TWIN.format(view=view), draw(result, dpi=options.dpi))


def _log_xfeatures(image, run, classes: list[int], options: ViewOptions) -> None:
    """Each class's stored x-feature panel, in its class's slot (after the drawn classes otherwise)."""
    from ._xfeature_figure import plot_xfeatures

    for slot, p in _class_slots(classes, stored_xfeatures(run), lambda p: p.class_index):
        image(TAG_XFEATURES.format(slot=slot), plot_xfeatures(p, run.images, run.class_names[p.class_index], dpi=options.dpi))


def _log_sags(image, run, classes: list[int], options: ViewOptions) -> None:
    """Each SAG a ``SAGMeasure`` stored, over its probe image, in its class's slot."""
    for slot, s in _class_slots(classes, stored_sags(run), lambda s: s.cls):
        title = (f"SAG, class {run.class_names[s.cls]}, probe image {s.image} (checkpoint {s.checkpoint}): "
                 f"full p={s.sag.full_probability:.2f}, blurred p={s.sag.baseline_probability:.2f}")
        image(TAG_SAG.format(slot=slot), s.sag.plot(image=run.images[s.image], max_per_level=6, dpi=options.dpi, title=title))


def _class_slots(classes: list[int], stored: Iterable[T], class_of: Callable[[T], int]) -> Iterator[tuple[int, T]]:
    """Each stored view with its class's slot: a drawn class's own, else the next slot after the
    drawn classes (one per further class), so the dashboard's cards stay put."""
    slots = {c: slot for slot, c in enumerate(classes, 1)}
    extra = len(classes)
    for item in stored:
        c = class_of(item)
        if c not in slots:
            extra += 1
            slots[c] = extra
        yield slots[c], item


class DrawBudget:
    """Keeps drawing a bounded share of wall time: draw again only when the last drawing took at
    most ``fraction`` of the time since it ended (None: always). Scalars and text are not counted:
    they are cheap and written at every record."""

    def __init__(self, fraction: float | None):
        self.fraction = fraction
        self.cost = 0.0  # seconds the last drawing took
        self.end: float | None = None  # when it ended (perf_counter)
        self.pending = False  # the latest explanation's images were skipped

    def allows(self, now: float) -> bool:
        ok = self.fraction is None or self.end is None or self.cost <= self.fraction * (now - self.end)
        self.pending = not ok
        return ok

    def spent(self, start: float, end: float) -> None:
        self.cost, self.end, self.pending = end - start, end, False

    @contextlib.contextmanager
    def drawing(self) -> Iterator[None]:
        """Count the block's wall time as the latest drawing's (``spent``), also when it fails."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent(start, time.perf_counter())
