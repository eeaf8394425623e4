"""What the callback writes to TensorBoard at each recorded checkpoint, under one ``i2x/`` prefix.

``log_views(writer, run, explanation, step, options)`` writes to any writer with the
``SummaryWriter`` methods (torch.utils.tensorboard or tensorboardX):

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
| image | ``i2x/class<n>/overlay`` | GradCAM over probe images, salient prototypes outlined |
| image | ``i2x/pair<n>`` | Fig. 5: a confused pair's prototypes, uncertain ones outlined |

plus a custom-scalars layout (the "CUSTOM SCALARS" dashboard) grouping the scalars.

Class views go to numbered slots (``class1`` .. ``class<max_classes>``, ``pair1`` ..), each image
titled with its class or pair: the dashboard keeps a fixed set of cards, one row of three per class,
while the classes worth drawing change during training (pin them with ``classes``). Class names in
tags are made tag-safe (``tag_name``). The interval views need two checkpoints, the gallery and the
overlays the run's probe images; what cannot be drawn yet is left out.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

from . import plots

__all__ = ["ViewOptions", "log_views", "log_summary", "log_figures", "custom_scalars_layout", "select_classes", "select_pairs", "select_prototypes", "tag_name",
           "TAG_TRUE_CONFIDENCE", "TAG_UNCERTAIN", "TAG_CONFIDENCE", "TAG_INTENSITY", "TAG_SUMMARY", "TAG_CLASS_TEXT",
           "TAG_GALLERY", "TAG_BETA", "TAG_EVOLUTION", "TAG_GRAPH", "TAG_OVERLAY", "TAG_PAIR"]

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


@dataclass(frozen=True)
class ViewOptions:
    """How much is drawn per checkpoint; the defaults keep a 10-class run readable and its event
    file small (figures for 3 classes and 2 pairs, about a dozen images per checkpoint).

    figures: write the images (False: scalars and text only).
    classes: the classes drawn (indices or names); None picks up to ``max_classes``: those of the
        pairs drawn, then the least confident.
    max_classes, max_pairs: bounds on the classes drawn and on the confused pairs drawn (pairs
        with uncertain prototypes first, then the pairs most confused on the probe).
    overlay_samples: probe images per drawn class in the overlay (0: no overlays).
    gallery_patches: patches per prototype in the gallery (0: no gallery).
    gallery_prototypes: at most this many prototypes in the gallery (uncertain ones first).
    max_rows: prototypes per evolution grid or pair view.
    scalar_prototypes: prototypes whose intensity is logged (uncertain ones first).
    dpi: resolution of every image (a 6-inch figure is 6 x dpi pixels wide).
    """

    figures: bool = True
    classes: tuple[int | str, ...] | None = None
    max_classes: int = 3
    max_pairs: int = 2
    overlay_samples: int = 2
    gallery_patches: int = 8
    gallery_prototypes: int = 32
    max_rows: int = 12
    scalar_prototypes: int = 8
    dpi: int = 60

    def __post_init__(self):
        if not isinstance(self.figures, bool):
            raise ValueError(f"figures must be True or False, got {self.figures!r}")
        if self.classes is not None:
            classes = (self.classes,) if isinstance(self.classes, (str, int)) else tuple(self.classes)
            if not classes or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes):
                raise ValueError(f"view classes must be a non-empty list of class indices or names, got {self.classes!r}")
            object.__setattr__(self, "classes", classes)
        for name in ("max_classes", "max_pairs", "overlay_samples", "gallery_patches", "gallery_prototypes", "max_rows",
                     "scalar_prototypes", "dpi"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.dpi < 20 or self.max_rows < 1:
            raise ValueError(f"dpi must be >= 20 and max_rows >= 1, got dpi={self.dpi}, max_rows={self.max_rows}")


def tag_name(name: str) -> str:
    """A class name as a tag component: letters, digits, '.', '-' and '_' only."""
    return re.sub(r"[^\w.-]+", "_", str(name)) or "_"


def _true_confidence(run) -> np.ndarray:
    """(N,) probability of each probe sample's true class at the latest checkpoint."""
    return run.confidences()[-1][np.arange(run.num_probe), run.labels]


def select_pairs(run, expl, options: ViewOptions) -> list[tuple[int, int]]:
    """The confused pairs drawn (at most ``max_pairs``): those with uncertain prototypes, best
    first, then the pairs the latest checkpoint confuses most often (probe samples of one class
    predicted as the other, both ways)."""
    pairs = [tuple(p) for p in expl.uncertain_pairs()]
    if run.num_checkpoints:
        m = run.num_classes
        pred = run.confidences()[-1].argmax(axis=1)
        counts = np.zeros((m, m), np.int64)
        np.add.at(counts, (run.labels, pred), 1)
        both = np.triu(counts + counts.T, 1)
        for flat in np.argsort(-both, axis=None, kind="stable"):
            a, b = divmod(int(flat), m)
            if both[a, b] == 0:
                break
            if (a, b) not in pairs:
                pairs.append((a, b))
    return pairs[: options.max_pairs]


def select_classes(run, expl, options: ViewOptions) -> list[int]:
    """The classes drawn: ``options.classes`` when given, else up to ``max_classes`` from the pairs
    drawn, then the classes whose probe samples are least confident."""
    if options.classes is not None:
        return [expl.class_index(c) for c in options.classes]
    chosen: list[int] = []
    for pair in select_pairs(run, expl, options):
        chosen += [c for c in pair if c not in chosen]
    if run.num_checkpoints:
        true = _true_confidence(run)
        mean = [float(true[run.labels == c].mean()) if (run.labels == c).any() else np.inf for c in range(run.num_classes)]
        chosen += [int(c) for c in np.argsort(mean, kind="stable") if c not in chosen and np.isfinite(mean[c])]
    return chosen[: options.max_classes]


def select_prototypes(expl, limit: int) -> list[int]:
    """Up to ``limit`` prototype ids, ascending: the uncertain ones first, then those present in
    the salient region of the most probe samples."""
    ranked = [u.prototype for u in expl.uncertain]
    ranked += [int(k) for k in np.argsort(-expl.presence.sum(axis=0), kind="stable")]
    out: list[int] = []
    for k in ranked:
        if k not in out:
            out.append(k)
    return sorted(out[:limit])


def custom_scalars_layout() -> dict:
    """The "CUSTOM SCALARS" dashboard: one chart per family of i2x scalars."""
    return {
        "i2x": {
            "confidence per class": ["Multiline", [r"i2x/confidence/.*", TAG_TRUE_CONFIDENCE]],
            "intensity of the top prototypes": ["Multiline", [r"i2x/intensity/.*"]],
            "uncertain prototypes": ["Multiline", [TAG_UNCERTAIN]],
        }
    }


def log_views(writer, run, expl, step: int, options: ViewOptions | None = None) -> None:
    """Write every view of the run's current explanation at ``step``: the scalars and text, then
    (with ``options.figures``) the images."""
    options = options or ViewOptions()
    log_summary(writer, run, expl, step, options)
    if options.figures:
        log_figures(writer, run, expl, step, options)


def log_summary(writer, run, expl, step: int, options: ViewOptions) -> None:
    """The cheap part of the views: scalars, the custom-scalars layout and the markdown text."""
    names = run.class_names
    writer.add_custom_scalars(custom_scalars_layout())  # tiny; rewritten so any event file has it
    true = _true_confidence(run)
    writer.add_scalar(TAG_TRUE_CONFIDENCE, float(true.mean()), step)
    writer.add_scalar(TAG_UNCERTAIN, len(expl.uncertain), step)
    for c in range(run.num_classes):
        members = run.labels == c
        if members.any():
            writer.add_scalar(TAG_CONFIDENCE.format(cls=tag_name(names[c])), float(true[members].mean()), step)
    intensity = run.intensities()[-1]
    for k in select_prototypes(expl, options.scalar_prototypes):
        present = intensity[:, k][np.isfinite(intensity[:, k])]
        if present.size:
            writer.add_scalar(TAG_INTENSITY.format(k=k), float(present.mean()), step)
    writer.add_text(TAG_SUMMARY, expl.to_markdown(), step)
    for c in range(run.num_classes):
        writer.add_text(TAG_CLASS_TEXT.format(cls=tag_name(names[c])), expl.class_markdown(c), step)


def log_figures(writer, run, expl, step: int, options: ViewOptions) -> None:
    """The images. Views that need probe images are left out, with a warning, when the run holds
    none."""

    def image(tag, fig):
        writer.add_image(tag, plots.to_rgb(fig), step, dataformats="HWC")

    classes = select_classes(run, expl, options)
    has_images = run.images is not None
    if not has_images and (options.gallery_patches or options.overlay_samples):
        warnings.warn(f"I2X views: {run.path} holds no probe images (store_probe_images=False or a probe over 64 MiB): "
                      "the prototype gallery and the GradCAM overlays are left out", RuntimeWarning, stacklevel=2)
    if has_images and options.gallery_patches and options.gallery_prototypes:
        image(TAG_GALLERY, plots.prototype_gallery(run, select_prototypes(expl, options.gallery_prototypes),
                                                   n=options.gallery_patches, dpi=options.dpi))
    if expl.num_intervals:
        image(TAG_BETA, plots.ridge_heatmap(expl, dpi=options.dpi))
    thumbs = run if has_images else None
    for slot, c in enumerate(classes, 1):
        if expl.num_intervals:
            image(TAG_EVOLUTION.format(slot=slot), plots.evolution_grid(expl, c, run=thumbs, max_rows=options.max_rows, dpi=options.dpi))
            image(TAG_GRAPH.format(slot=slot), plots.checkpoint_graph(expl, c, dpi=options.dpi))
        if has_images and options.overlay_samples:
            image(TAG_OVERLAY.format(slot=slot), plots.saliency_overlays(run, c, samples=options.overlay_samples, dpi=options.dpi))
    if expl.num_intervals:
        for slot, (a, b) in enumerate(select_pairs(run, expl, options), 1):
            image(TAG_PAIR.format(slot=slot), plots.confused_pair(expl, a, b, run=thumbs, max_rows=options.max_rows, dpi=options.dpi))
