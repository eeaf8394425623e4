"""The paper's views of an explanation as matplotlib figures (Agg, no pyplot, no Lightning).

Each function takes an ``Explanation`` and/or an ``I2XRun`` and returns a
``matplotlib.figure.Figure``; notebooks show it as it is, ``to_rgb`` / ``to_png`` render it for
TensorBoard and the HTML report. Colours: blue = a positive coefficient (the prototype raised the
class), red = negative (it lowered it).

- ``prototype_gallery(run)``: each prototype as the input patches of its nearest locations;
- ``evolution_grid(expl, c)`` (Fig. 3): prototypes x intervals for class c, coloured by the sign of
  ``beta[t][k, c]`` and labelled with the competing class;
- ``checkpoint_graph(expl, c)`` (Fig. 4): edges ``b -> T_t`` labelled by the prototypes responsible;
- ``confused_pair(expl, a, b)`` (Fig. 5): every prototype separating a from b, uncertain ones marked;
- ``ridge_heatmap(expl)``: one interval's K x M coefficients;
- ``confidence_curves(run)``: each class's mean true-class probability over the checkpoints;
- ``saliency_overlays(run, c)``: the run's saliency maps (GradCAM by default) over probe images with the salient prototypes outlined.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ..analysis import SALIENCY_THRESHOLD, class_rows, competing_class, pair_rows, salient_mask
from ..saliency import saliency_label
from ._mpl import Circle, FancyArrowPatch, FancyBboxPatch, Figure, FigureCanvasAgg, LineCollection, Rectangle
from ._patches import display_images, prototype_patches

__all__ = [
    "prototype_gallery",
    "evolution_grid",
    "checkpoint_graph",
    "confused_pair",
    "ridge_heatmap",
    "confidence_curves",
    "saliency_overlays",
    "confusion_matrix",
    "to_rgb",
    "to_png",
]

CMAP = "RdBu"  # blue = positive, red = negative; readable by red-green colour-blind people
OUTLINE_COLOURS = ("#00e5ff", "#76ff03", "#ff4081", "#ffd600", "#ffffff")
DEFAULT_DPI = 80


# -- rendering ---------------------------------------------------------------------------------------
def to_rgb(fig: Figure) -> np.ndarray:
    """The figure drawn as an (H, W, 3) uint8 array of exactly figsize x dpi pixels."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at its own dpi."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def _figure(width: float, height: float, dpi: int) -> Figure:
    """A figure laid out by hand (in inches, below): constrained layout would triple the time a
    checkpoint spends drawing."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _axes(fig: Figure, left: float, bottom: float, width: float, height: float):
    """An axes placed in inches from the figure's bottom-left corner."""
    fw, fh = fig.get_size_inches()
    return fig.add_axes((left / fw, bottom / fh, width / fw, height / fh))


_CHAR_IN = 0.075  # inches per character of an 8-point label


def _note(fig: Figure, text: str) -> Figure:
    """A figure that says why there is nothing to draw (rather than a blank image)."""
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10)
    return fig


def _short(name: str, n: int = 8) -> str:
    return name if len(name) <= n else name[: n - 1] + "."


def _symmetric(values: np.ndarray) -> float:
    vmax = float(np.nanmax(np.abs(values))) if values.size else 0.0
    return vmax if vmax > 0 else 1.0


def _thumbnails(ax, run, rows: Sequence[int], context: float) -> None:
    """One patch per row (the prototype's nearest location), stacked to line up with a heat map."""
    items = prototype_patches(run, rows, n=1, context=context)
    size = next(iter(items.values()))[0].shape[1:3]
    strip = np.ones((len(rows) * size[0], size[1], 3), np.float32)
    for r, k in enumerate(rows):
        patches = items[k][0]
        if len(patches):
            strip[r * size[0] : (r + 1) * size[0]] = patches[0]
    ax.imshow(strip, extent=(-0.5, 0.5, len(rows) - 0.5, -0.5), aspect="auto", interpolation="nearest")
    ax.set_xticks([])


def _heat_map(values: np.ndarray, row_labels: list[str], col_labels: list[str], run, rows: Sequence[int], *, context: float,
              dpi: int, colour_label: str, x_label: str, title: str):
    """A figure holding a rows x columns heat map with its labels, a colour bar and, when the run
    has images, one thumbnail per row (the prototype's nearest patch); returns (figure, axes)."""
    thumbs = run is not None and run.images is not None and run.reference is not None
    left = 0.2 + _CHAR_IN * max(len(r) for r in row_labels)
    fw = left + (0.33 if thumbs else 0) + max(2.0, 0.5 * len(col_labels)) + 1.3
    fig = _figure(fw, 1.15 + 0.28 * len(row_labels), dpi)
    fh = fig.get_figheight()
    bottom, height = 0.6, fh - 1.05
    label_ax = None
    if thumbs:
        label_ax = _axes(fig, left, bottom, 0.28, height)  # square thumbnails: rows are 0.28 in high
        _thumbnails(label_ax, run, rows, context)
        left += 0.33
    ax = _axes(fig, left, bottom, fw - left - 1.3, height)
    (label_ax or ax).set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    if thumbs:
        ax.set_yticks([])
    vmax = _symmetric(values)
    im = ax.imshow(values, cmap=CMAP, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8)
    bar = fig.colorbar(im, cax=_axes(fig, fw - 1.15, bottom, 0.15, height))
    bar.ax.tick_params(labelsize=7)
    bar.set_label(colour_label, fontsize=8)
    fig.text(0.5 * (left + fw - 1.3) / fw, 0.08 / fh, x_label, ha="center", va="bottom", fontsize=8)
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / fh, va="top")
    return fig, ax


# -- prototypes ---------------------------------------------------------------------------------------
def prototype_gallery(run, prototypes: Sequence[int] | None = None, *, n: int = 8, context: float = 1.0,
                      columns: int = 6, dpi: int = DEFAULT_DPI) -> Figure:
    """Each prototype as the input patches of its n locations nearest the centroid (one per probe
    image), a grid per prototype under its id; needs the run's probe images. When the run holds
    the model's reliance on its current prototypes (``RelianceMeasure``), each id is followed by
    it ("rel +0.21": hiding the prototype costs the true class 0.21 probability beyond hiding as
    much of the image at random), and the shortcut suspects (``run_suspects``) are marked "suspect"."""
    ids = list(range(run.num_prototypes)) if prototypes is None else [int(k) for k in prototypes]
    reliance, suspects = _gallery_reliance(run)
    if run.images is None or run.reference is None or not ids:
        return _note(_figure(6, 1.5, dpi), "no gallery: the run holds no probe images (store_probe_images=False or probe over 64 MiB)"
                     if run.images is None else "no gallery: no prototypes yet")
    items = prototype_patches(run, ids, n=n, context=context)
    ph, pw = next(iter(items.values()))[0].shape[1:3]
    per_row = min(n, 4)
    prow = -(-n // per_row)
    gap, band = max(1, ph // 8), max(4, int(0.6 * ph))  # between patches; the label band above a cell
    cell_h, cell_w = band + prow * (ph + gap), per_row * (pw + gap) + 3 * gap
    cols = max(1, min(columns, len(ids)))
    rows = -(-len(ids) // cols)
    canvas = np.ones((rows * cell_h, cols * cell_w, 3), np.float32)
    for idx, k in enumerate(ids):
        top, left = (idx // cols) * cell_h + band, (idx % cols) * cell_w
        patches = items[k][0]
        canvas[top : top + prow * (ph + gap) - gap, left : left + per_row * (pw + gap) - gap] = 0.85
        for p, patch in enumerate(patches):
            y, x = top + (p // per_row) * (ph + gap), left + (p % per_row) * (pw + gap)
            canvas[y : y + ph, x : x + pw] = patch
    width = min(14.0, 2.0 * cols)
    fig = _figure(width, max(1.0, width * canvas.shape[0] / canvas.shape[1]) + 0.4, dpi)
    ax = fig.add_axes((0.005, 0.005, 0.99, 0.99 * (1 - 0.4 / fig.get_figheight())))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for idx, k in enumerate(ids):
        label = f"P-{k}" + ("" if items[k][1] else " (no locations)")
        if reliance is not None and np.isfinite(reliance[k]):
            label += f"  rel {reliance[k]:+.2f}" + ("  suspect" if k in suspects else "")
        ax.text((idx % cols) * cell_w, (idx // cols) * cell_h + band * 0.85, label,
                fontsize=8, fontweight="bold", va="bottom", color="#b00020" if k in suspects else "black")
    fig.suptitle(f"prototypes: the input patches nearest each centroid (checkpoint T{run.reference})", fontsize=9, y=0.999, va="top")
    return fig


def _gallery_reliance(run) -> tuple[np.ndarray | None, set[int]]:
    """(the stored reliance per prototype or None, the suspects) for the gallery's labels."""
    try:
        rel = run.stored_reliance() if hasattr(run, "stored_reliance") else None
    except Exception:  # a damaged attachment must not cost the gallery
        return None, set()
    if rel is None:
        return None, set()
    try:
        return rel.reliance, set(run.suspects(rel))
    except Exception:
        return rel.reliance, set()


# -- class views --------------------------------------------------------------------------------------
def _class_rows(expl, ci: int, max_rows: int) -> tuple[list[int], list[str]]:
    """The prototypes a class view shows (``analysis.class_rows``) and their row labels."""
    rows = class_rows(expl, ci, max_rows)
    short = {"shared": " shared", "specialised": " spec.", "": ""}
    return [k for k, _ in rows], [f"P-{k}{short[kind]}" for k, kind in rows]


def evolution_grid(expl, c: int | str, run=None, *, max_rows: int = 12, context: float = 1.0, dpi: int = DEFAULT_DPI) -> Figure:
    """Fig. 3: for class c, prototypes (rows) x intervals (columns). A cell is blue when the
    prototype raised c's confidence during the interval (``beta[t][k, c] > 0``), red when it lowered
    it; where ``|beta| > tau`` it names the competing class: the one whose confidence moved the
    other way the most. Prototype thumbnails on the left when ``run`` (with images) is given."""
    ci, names, t_ = expl.class_index(c), expl.class_names, expl.num_intervals
    rows, labels = _class_rows(expl, ci, max_rows)
    if t_ == 0 or not rows:
        return _note(_figure(5, 1.5, dpi), f"class {names[ci]}: no interval yet (needs two checkpoints)" if t_ == 0
                     else f"class {names[ci]}: no prototype moved it")
    values = expl.beta[:, rows, ci].T  # (R, T-1)
    fig, ax = _heat_map(values, labels, [f"T{t}" for t in range(t_)], run, rows, context=context, dpi=dpi, colour_label="beta[t][k, c]",
                        x_label="interval (blue: raised, red: lowered; label: the competing class)",
                        title=f"class {names[ci]}: what each prototype did to its confidence")
    if t_ <= 24:
        for r, k in enumerate(rows):
            for t in range(t_):
                b = competing_class(expl, t, k, ci)
                if b is not None:
                    ax.text(t, r, _short(names[b], 5), ha="center", va="center", fontsize=7,
                            color="white" if abs(values[r, t]) > 0.6 * _symmetric(values) else "black")
    return fig


GRAPH_WIDTH_IN = 5.0
"""Width of the checkpoint graph: TensorBoard shows an image at the width of its card (about 350
pixels by default), so a 5-inch figure with 9-point text keeps the text about 9 pixels high."""


def checkpoint_graph(expl, c: int | str, *, max_labels: int = 2, max_sources: int = 4, max_intervals: int = 8,
                     dpi: int = DEFAULT_DPI) -> Figure:
    """Fig. 4: the annotated checkpoint graph of class c, one row per interval (time flows down).
    Row t: the node T_t, and the classes b whose confidence prototypes moved to c during t, each
    with those prototypes (the ``max_sources`` classes with the most prototypes, the last
    ``max_intervals`` intervals). Drawn narrow, with large text, to read at TensorBoard's card width."""
    ci, names, t_ = expl.class_index(c), expl.class_names, expl.num_intervals
    shown = list(range(max(0, t_ - max_intervals), t_))
    by_t: dict[int, list[tuple[int, list[int]]]] = {t: [] for t in shown}
    for t, b, _, ks in expl.edges(ci):
        if t in by_t:
            by_t[t].append((b, ks))
    row, top = 0.78, 0.5
    fw, fh = GRAPH_WIDTH_IN, top + 0.2 + row * max(len(shown), 1)
    fig = _figure(fw, fh, dpi)
    if not shown:
        return _note(fig, f"class {names[ci]}: no interval yet (needs two checkpoints)")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.set_xlim(0, fw)
    ax.set_ylim(fh, 0)  # inches, y down
    colours = [f"C{i % 10}" for i in range(expl.num_classes)]
    node_x, chip_x0, chip_w = 0.42, 1.2, 0.92
    for r, t in enumerate(shown):
        y = top + 0.25 + r * row
        ax.add_patch(Circle((node_x, y), 0.24, color=colours[ci], ec="black", zorder=3))
        ax.text(node_x, y, f"T{t}", ha="center", va="center", fontsize=9, color="white", fontweight="bold", zorder=4)
        if r:
            ax.add_patch(FancyArrowPatch((node_x, y - row + 0.25), (node_x, y - 0.25), arrowstyle="-|>", mutation_scale=10, color="0.55"))
        ranked = sorted(by_t[t], key=lambda e: -len(e[1]))
        if not ranked:
            ax.text(chip_x0, y, "no class lost confidence to it", ha="left", va="center", fontsize=9, color="0.45")
            continue
        ax.add_patch(FancyArrowPatch((chip_x0 - 0.05, y), (node_x + 0.27, y), arrowstyle="-|>", mutation_scale=12, color="0.3", lw=1.2))
        for j, (b, ks) in enumerate(ranked[:max_sources]):
            x = chip_x0 + j * chip_w
            ax.add_patch(FancyBboxPatch((x + 0.04, y - 0.3), chip_w - 0.12, 0.26, boxstyle="round,pad=0.02", color=colours[b], zorder=3))
            ax.text(x + chip_w / 2 - 0.02, y - 0.17, _short(names[b], 9), ha="center", va="center", fontsize=9, color="white",
                    fontweight="bold", zorder=4)
            label = ", ".join(f"P-{k}" for k in ks[:max_labels]) + (f" +{len(ks) - max_labels}" if len(ks) > max_labels else "")
            ax.text(x + chip_w / 2 - 0.02, y + 0.12, label, ha="center", va="center", fontsize=9, zorder=4)
        if len(ranked) > max_sources:
            ax.text(fw - 0.05, y + 0.3, f"+{len(ranked) - max_sources} classes", ha="right", va="center", fontsize=8.5, color="0.35")
    ax.text(0.1, 0.28, f"class {_short(names[ci], 12)}: who lost confidence to it, by which prototypes", ha="left", va="center",
            fontsize=10)
    return fig


def confused_pair(expl, a: int | str, b: int | str, run=None, *, max_rows: int = 12, context: float = 1.0, dpi: int = DEFAULT_DPI) -> Figure:
    """Fig. 5: every prototype that separated classes a and b in some interval
    (``|beta[t][k, a] - beta[t][k, b]| > tau``), coloured by that difference (blue: towards a, red:
    towards b). Uncertain prototypes, whose difference keeps changing sign, come first, outlined."""
    ai, bi, names, t_ = expl.class_index(a), expl.class_index(b), expl.class_names, expl.num_intervals
    rows, unc = pair_rows(expl, ai, bi, max_rows)
    diff = (expl.beta[:, :, ai] - expl.beta[:, :, bi]) if t_ else np.zeros((0, expl.num_prototypes))
    over = np.abs(diff) > expl.thresholds[:, None] if t_ else np.zeros((0, expl.num_prototypes), bool)
    title = f"{names[ai]} vs {names[bi]}"
    if not rows:
        return _note(_figure(5, 1.5, dpi), f"{title}: no prototype separated them above tau" if t_ else f"{title}: no interval yet (needs two checkpoints)")
    labels = [f"P-{k} uncertain, {unc[k]} flips" if k in unc else f"P-{k}" for k in rows]
    fig, ax = _heat_map(diff[:, rows].T, labels, [f"T{t}" for t in range(t_)], run, rows, context=context, dpi=dpi,
                        colour_label=f"beta[t][k, {_short(names[ai])}] - beta[t][k, {_short(names[bi])}]",
                        x_label=f"interval (blue: towards {names[ai]}, red: towards {names[bi]}; +/-: above tau)",
                        title=f"{title}: the prototypes involved, uncertain ones outlined")
    for r, k in enumerate(rows):
        for t in np.flatnonzero(over[:, k]):
            ax.text(t, r, "+" if diff[t, k] > 0 else "-", ha="center", va="center", fontsize=8)
        if k in unc:
            ax.add_patch(Rectangle((-0.5, r - 0.5), t_, 1, fill=False, edgecolor="black", lw=1.8))
    return fig


def ridge_heatmap(expl, interval: int = -1, *, dpi: int = DEFAULT_DPI) -> Figure:
    """The K x M ridge coefficients of one interval; dots mark ``|beta| > tau``."""
    k_, m, t_ = expl.num_prototypes, expl.num_classes, expl.num_intervals
    if t_ == 0:
        return _note(_figure(5, 1.5, dpi), "no interval yet (needs two checkpoints)")
    t = range(t_)[interval]
    beta, tau = expl.beta[t], expl.thresholds[t]
    bottom = 0.35 + _CHAR_IN * 0.7 * max(len(_short(n)) for n in expl.class_names) if m > 10 else 0.35
    fw, fh = max(5.0, 2.1 + 0.42 * m), min(12.0, bottom + 0.55 + 0.15 * k_)
    fig = _figure(fw, fh, dpi)
    ax = _axes(fig, 0.6, bottom, fw - 1.8, fh - bottom - 0.4)
    vmax = _symmetric(beta)
    im = ax.imshow(beta, cmap=CMAP, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    rr, cc = np.nonzero(np.abs(beta) > tau)
    ax.scatter(cc, rr, s=5, color="black")
    step = max(1, k_ // 32)
    ax.set_yticks(range(0, k_, step), [f"P-{k}" for k in range(0, k_, step)], fontsize=7)
    ax.set_xticks(range(m), [_short(n) for n in expl.class_names], fontsize=8, rotation=45 if m > 10 else 0)
    fig.colorbar(im, cax=_axes(fig, fw - 1.05, bottom, 0.15, fh - bottom - 0.4)).ax.tick_params(labelsize=7)
    ax.set_title(f"ridge coefficients beta[T{t}] (prototype -> class); dots: |beta| > tau = {tau:.3g}", fontsize=9)
    return fig


def confidence_curves(run, *, dpi: int = DEFAULT_DPI) -> Figure:
    """Mean probability of the true class per class over the checkpoints (what the TensorBoard
    scalars ``i2x/confidence/<class>`` show)."""
    t_, names = run.num_checkpoints, run.class_names
    if t_ == 0:
        return _note(_figure(5, 1.5, dpi), "no checkpoint yet")
    conf = run.confidences()[:, np.arange(run.num_probe), run.labels]  # (T, N)
    fig = _figure(7.5, 3.4, dpi)
    ax = _axes(fig, 0.6, 0.5, 5.0, 2.5)
    for c in range(run.num_classes):
        members = run.labels == c
        if members.any():
            ax.plot(range(t_), conf[:, members].mean(axis=1), marker="o", ms=3, lw=1.2, color=f"C{c % 10}", label=_short(names[c]))
    ax.set_xticks(range(t_), [f"T{t}" for t in range(t_)], fontsize=7)
    ax.set_ylabel("mean p(true class)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=1 + run.num_classes // 12, frameon=False)
    ax.set_title("confidence per class over the checkpoints", fontsize=9)
    return fig


# -- images -------------------------------------------------------------------------------------------
def _outline(mask: np.ndarray, cell_h: float, cell_w: float) -> np.ndarray:
    """Pixel-space segments of the border of a set of feature cells: (S, 2, 2) (x, y) pairs."""
    h, w = mask.shape
    padded = np.pad(mask, 1)
    segs = []
    for i, j in zip(*np.nonzero(mask)):
        y0, y1, x0, x1 = i * cell_h - 0.5, (i + 1) * cell_h - 0.5, j * cell_w - 0.5, (j + 1) * cell_w - 0.5
        if not padded[i, j + 1]:
            segs.append(((x0, y0), (x1, y0)))
        if not padded[i + 2, j + 1]:
            segs.append(((x0, y1), (x1, y1)))
        if not padded[i + 1, j]:
            segs.append(((x0, y0), (x0, y1)))
        if not padded[i + 1, j + 2]:
            segs.append(((x1, y0), (x1, y1)))
    return np.asarray(segs, dtype=np.float64).reshape(-1, 2, 2)


def _salient_prototypes(cam: np.ndarray, assignment: np.ndarray, top: int, threshold: float) -> list[int]:
    """The prototypes present in a sample's salient region (``analysis.salient_mask``), by their
    mean saliency in that sample, highest first; at most ``top``."""
    ks = np.unique(assignment[salient_mask(cam[None], threshold)[0].reshape(cam.shape)])
    means = [float(cam[assignment == k].mean()) for k in ks]
    return [int(ks[i]) for i in np.argsort(means)[::-1][:top]]


def run_saliency_label(run) -> str:
    """The caption name of the run's maps: its configured ``cam``, "saliency" when unknown."""
    return saliency_label(run.config.cam if getattr(run, "config", None) is not None else None)


def saliency_overlays(run, c: int | str, *, samples: int = 2, top: int = 3, sample_ids: Sequence[int] | None = None,
                      threshold: float = SALIENCY_THRESHOLD, dpi: int = DEFAULT_DPI) -> Figure:
    """Probe images of class c with their saliency map (reference checkpoint; the title names the run's
    method, ``saliency.saliency_label``) and the cells of the
    ``top`` prototypes of their salient region outlined and named: where the model looks, and which
    prototype is there. Shows the first ``samples`` probe images of the class unless ``sample_ids``."""
    names = run.class_names
    ci = names.index(c) if isinstance(c, str) else int(c)
    ids = list(np.flatnonzero(run.labels == ci)[:samples]) if sample_ids is None else [int(i) for i in sample_ids]
    fig = _figure(0.4 + 2.3 * max(len(ids), 1), 2.8, dpi)
    if run.images is None or run.reference is None or not ids:
        return _note(fig, f"class {names[ci]}: " + ("the run holds no probe images" if run.images is None
                                                    else "no prototypes yet" if run.reference is None else "no probe sample"))
    ref = run.reference
    cams, assignment, conf = run.cams()[ref], run.assignment(), run.confidences()[ref]
    display = display_images(run.images[ids])
    big_h, big_w = display.shape[1:3]
    h, w = run.feature_shape
    axes = fig.subplots(1, len(ids), squeeze=False)[0]
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.65 / fig.get_figheight(), wspace=0.06)
    normalised = run.config is None or run.config.probe_pass.normalise_maps
    vmax = 1.0 if normalised else max(float(cams[ids].max()), 1e-12)
    for ax, i, img in zip(axes, ids, display):
        ax.imshow(img, interpolation="nearest")
        ax.imshow(cams[i], cmap="jet", alpha=0.4, vmin=0, vmax=vmax, interpolation="bilinear",
                  extent=(-0.5, big_w - 0.5, big_h - 0.5, -0.5))
        for n, k in enumerate(_salient_prototypes(cams[i], assignment[i], top, threshold)):
            colour = OUTLINE_COLOURS[n % len(OUTLINE_COLOURS)]
            mask = assignment[i] == k
            ax.add_collection(LineCollection(_outline(mask, big_h / h, big_w / w), colors=colour, linewidths=1.6))
            yi, xj = np.unravel_index(np.argmax(np.where(mask, cams[i], -np.inf)), mask.shape)
            ax.text((xj + 0.5) * big_w / w, (yi + 0.5) * big_h / h, f"P-{k}", color="black", fontsize=7, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc=colour, ec="none", alpha=0.85))
        ax.set_xlim(-0.5, big_w - 0.5)
        ax.set_ylim(big_h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{i}: p({_short(names[ci])})={conf[i, ci]:.2f}, pred {_short(names[int(conf[i].argmax())])}", fontsize=8)
    fig.suptitle(f"class {names[ci]}: {run_saliency_label(run)} (T{ref}) and the prototypes in the salient region", fontsize=9, y=0.99, va="top")
    return fig


def confusion_matrix(cm: np.ndarray, class_names: Sequence[str], title: str = "confusions", dpi: int = DEFAULT_DPI) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted), counts written in the cells,
    colour on a log scale so the few off-diagonal confusions stay visible."""
    m = len(class_names)
    side = 0.4 * m
    fig = _figure(side + 1.3, side + 1.2, dpi)
    ax = _axes(fig, 1.0, 0.9, side, side)
    shown = np.log1p(np.asarray(cm, dtype=float))
    ax.imshow(shown, cmap="Blues", aspect="auto")
    for i in range(m):
        for j in range(m):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > 0.6 * shown.max() else "black")
    ax.set_xticks(range(m), [str(c) for c in class_names], rotation=90, fontsize=7)
    ax.set_yticks(range(m), [str(c) for c in class_names], fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig
