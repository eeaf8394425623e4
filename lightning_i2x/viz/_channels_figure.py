"""The channel views of an ``InfoDisentMeasure`` (the ``"infodisent"`` attachment): the gallery of
each channel's top patches, one image's contributions as signed bars, the channel-to-class weights."""

from __future__ import annotations

import numpy as np

from ._mpl import Figure, FigureCanvasAgg
from ._patches import display_images, extract_patch, patch_box

__all__ = ["has_channel_views", "channel_arrays", "shown_channels", "channel_gallery", "contribution_bars", "channel_weights"]

ATTACHMENT = "infodisent"
POSITIVE, NEGATIVE = "#2b8cbe", "#e34a33"


def has_channel_views(run) -> bool:
    return ATTACHMENT in run.attachments


def channel_arrays(run) -> dict[str, np.ndarray]:
    found = run.attachment(ATTACHMENT)
    if found is None:
        raise ValueError(f"{run.path} holds no InfoDisent channels: add lightning_i2x.measures.InfoDisentMeasure() to the callback's measures")
    return found[0]


def shown_channels(arrays: dict[str, np.ndarray], n: int = 12) -> np.ndarray:
    """The ``n`` channels with the largest total |contribution| over the probe, most first."""
    total = np.abs(arrays["contributions"]).sum(0)
    return np.argsort(-total, kind="stable")[:n]


def _figure(w: float, h: float, dpi: int) -> Figure:
    fig = Figure(figsize=(w, h), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def channel_gallery(run, *, channels=None, n: int = 6, dpi: int = 80) -> Figure:
    """One row per channel (default the 12 that contribute most): its ``n`` top probe patches,
    each around the channel's greatest location in that image."""
    arrays = channel_arrays(run)
    if run.images is None:
        raise ValueError(f"{run.path} holds no probe images: the channel gallery needs them")
    chosen = shown_channels(arrays) if channels is None else np.asarray(channels, dtype=np.int64)
    display = display_images(run.images)
    h, w = run.feature_shape
    images, locations = arrays["top_images"], arrays["top_locations"]
    n = min(n, images.shape[1])
    fig = _figure(1.0 + 1.0 * n, 0.3 + 1.05 * len(chosen), dpi)
    purity = arrays["purity_after"]
    for r, k in enumerate(chosen):
        for j in range(n):
            ax = fig.add_subplot(len(chosen), n, r * n + j + 1)
            s, loc = int(images[k, j]), int(locations[k, j])
            ax.imshow(extract_patch(display[s], patch_box(loc // w, loc % w, (h, w), display.shape[1:3])), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"ch {k}\npurity {purity[k]:.2f}", fontsize=7)
    fig.suptitle("channel gallery (EPIC-unmixed): each channel's top probe patches", fontsize=9)
    return fig


def contribution_bars(run, image: int, *, k: int = 8, dpi: int = 80) -> Figure:
    """Probe image ``image``: the ``k`` largest positive and ``k`` most negative channel
    contributions to its predicted class; they sum, with the bias, to the model's logit."""
    arrays = channel_arrays(run)
    contrib, c = arrays["contributions"][image], int(arrays["predicted"][image])
    order = np.argsort(contrib)
    picked = np.unique(np.concatenate([order[:k][contrib[order[:k]] < 0], order[::-1][:k][contrib[order[::-1][:k]] > 0]]))
    picked = picked[np.argsort(contrib[picked])]
    fig = _figure(5.5, 0.8 + 0.22 * max(len(picked), 1), dpi)
    ax = fig.add_axes([0.18, 0.12, 0.78, 0.74])
    ax.barh(range(len(picked)), contrib[picked], color=[POSITIVE if v > 0 else NEGATIVE for v in contrib[picked]])
    ax.set_yticks(range(len(picked)), [f"ch {i}" for i in picked], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.6)
    logit = float(contrib.sum() + arrays["bias"][c])
    ax.set_title(f"image {image}, class {run.class_names[c]}: logit {logit:.2f} = sum of {contrib.size} channels "
                 f"+ bias {float(arrays['bias'][c]):.2f}", fontsize=8)
    return fig


def channel_weights(run, *, channels=None, dpi: int = 80) -> Figure:
    """The carried-over head A U^T: class x channel weights (default the 32 channels that
    contribute most)."""
    arrays = channel_arrays(run)
    chosen = shown_channels(arrays, 32) if channels is None else np.asarray(channels, dtype=np.int64)
    weight = arrays["weight"][:, chosen]
    m = weight.shape[0]
    fig = _figure(max(4.0, 1.5 + 0.22 * len(chosen)), 1.0 + 0.25 * m, dpi)
    ax = fig.add_axes([0.12, 0.2, 0.78, 0.68])
    vmax = float(np.abs(weight).max()) or 1.0
    im = ax.imshow(weight, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(m), [str(n)[:12] for n in run.class_names], fontsize=7)
    ax.set_xticks(range(len(chosen)), [str(k) for k in chosen], fontsize=6, rotation=90)
    ax.set_xlabel("channel", fontsize=7)
    fig.colorbar(im, cax=fig.add_axes([0.92, 0.2, 0.02, 0.68])).ax.tick_params(labelsize=6)
    ax.set_title("channel-to-class weights of the carried-over head (A U^T)", fontsize=9)
    return fig
