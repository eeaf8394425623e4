"""A self-contained HTML report of a run, for people who do not run TensorBoard.

One file, every image embedded as a ``data:`` URI, no external resource: it opens offline and can
be mailed. It holds the views the callback writes to TensorBoard (``lightning_i2x.views``) for every
class and the top confused pairs, plus the findings as text, and the structured attention graphs a
``SAGMeasure`` stored, each with its minimal sufficient explanations as text. ``i2x report RUN_DIR --out FILE``.
"""

from __future__ import annotations

import base64
import datetime
import html
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._core import require, write_bytes
from ..analysis import Explanation
from ..measures import stored_sags, stored_twin
from ..options import ViewOptions
from ..store import I2XRun
from ..xfeatures import PANEL_ATTACHMENT, stored_xfeatures
from . import _channels_figure as chf
from . import _figures as plots
from ._faithfulness_figure import faithfulness_figure, has_faithfulness
from ._views import drawn_classes, drawn_pairs, tag_name
from ._xfeature_figure import plot_xfeatures

__all__ = ["build_report", "write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
nav a { margin-right: 1em; } .meta { color: #555; }
figure.view { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure.view img { max-width: 100%; border: 1px solid #ddd; }
figure.view figcaption { font-size: 0.85em; color: #555; max-width: 40em; }
figure.broken { outline: 3px solid #d00; } .note { color: #a60; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; }
article.class { border-top: 1px dashed #ccc; margin-top: 1em; }
"""

# marks images the browser could not decode, and counts them on <body> for automated checks
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  broken.forEach(function (i) { i.closest("figure").classList.add("broken"); });
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken", String(broken.length));
});
"""


def _figure_html(view_id: str, kind: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure class="view" id="view-{html.escape(view_id)}" data-view="{kind}">'
            f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _md(text: str, demote: int = 0) -> str:
    """Markdown as HTML, headings ``demote`` levels lower (to sit under the page's own)."""
    if demote:
        text = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + demote) + " ", text, flags=re.M)
    return require("markdown").markdown(text, extensions=["tables"])


def build_report(
    run: I2XRun,
    explanation: Explanation | None = None,
    *,
    classes: Sequence[int | str] | None = None,
    max_pairs: int = 3,
    gallery_patches: int = 8,
    dpi: int = 80,
    progress: bool = False,
) -> str:
    """The report as an HTML string: findings, confidence curves, prototype gallery, ridge
    coefficients, the top ``max_pairs`` confused pairs and, for every class (or ``classes``),
    its summary, evolution grid, checkpoint graph and saliency overlays."""
    expl = run.explain() if explanation is None else explanation
    names = run.class_names
    options = ViewOptions(classes=None if classes is None else tuple(classes), max_classes=run.num_classes, max_pairs=max_pairs)
    chosen = list(range(run.num_classes)) if classes is None else drawn_classes(run, expl, options)
    pairs = drawn_pairs(run, expl, options)
    has_images = run.images is not None
    thumbs = run if has_images else None

    # (section, view id, kind, caption, figure factory): drawn one by one under the progress bar
    tasks: list[tuple[str, str, str, str, Callable]] = [
        ("overview", "confidence", "confidence", "mean probability of the true class, per class, over the checkpoints",
         lambda: plots.confidence_curves(run, dpi=dpi)),
    ]
    metrics = run.metrics()
    if has_faithfulness(metrics):
        tasks.append(("overview", "faithfulness", "faithfulness",
                      "deletion and insertion areas of the maps over the checkpoints (FaithfulnessMeasure); dashed: a random order",
                      lambda: faithfulness_figure(metrics, dpi=dpi)))
    if has_images and gallery_patches:
        tasks.append(("overview", "gallery", "gallery", f"each prototype as the {gallery_patches} probe patches nearest its centroid",
                      lambda: plots.prototype_gallery(run, n=gallery_patches, dpi=dpi)))
    tasks.append(("overview", "beta", "beta", "ridge coefficients of the latest interval: which prototype moves which class",
                  lambda: plots.ridge_heatmap(expl, dpi=dpi)))
    for a, b in pairs:
        tasks.append(("pairs", f"pair-{tag_name(names[a])}-{tag_name(names[b])}", "pair",
                      f"{names[a]} vs {names[b]}: every prototype that separated them; uncertain ones outlined",
                      lambda a=a, b=b: plots.confused_pair(expl, a, b, run=thumbs, dpi=dpi)))
    for c in chosen:
        cls = tag_name(names[c])
        tasks.append((f"class-{c}", f"evolution-{cls}", "evolution", f"class {names[c]}: did each prototype raise or lower it, against which class",
                      lambda c=c: plots.evolution_grid(expl, c, run=thumbs, dpi=dpi)))
        tasks.append((f"class-{c}", f"graph-{cls}", "graph", f"class {names[c]}: the annotated checkpoint graph",
                      lambda c=c: plots.checkpoint_graph(expl, c, dpi=dpi)))
        if has_images:
            tasks.append((f"class-{c}", f"overlay-{cls}", "overlay", f"class {names[c]}: {plots.run_saliency_label(run)} and the prototypes of the salient region",
                          lambda c=c: plots.saliency_overlays(run, c, samples=3, dpi=dpi)))

    sags = stored_sags(run) if "sag" in run.attachments else []
    for i, s in enumerate(sags):
        tasks.append((f"sag-{i}", f"sag-{tag_name(names[s.cls])}", "sag",
                      f"class {names[s.cls]}: the structured attention graph of probe image {s.image} (checkpoint {s.checkpoint})",
                      lambda s=s: s.sag.plot(image=None if run.images is None else run.images[s.image], max_per_level=6, dpi=dpi)))

    channels = "infodisent" in run.attachments
    if channels:
        if has_images:
            tasks.append(("channels", "channel-gallery", "gallery", "each EPIC-unmixed channel's top probe patches, with its purity",
                          lambda: chf.channel_gallery(run, dpi=dpi)))
        tasks.append(("channels", "channel-weights", "beta", "the carried-over head A U^T: which channel moves which class",
                      lambda: chf.channel_weights(run, dpi=dpi)))
        for c in chosen:
            members = np.flatnonzero(run.labels == c)
            if members.size:
                tasks.append(("channels", f"contributions-{tag_name(names[c])}", "contributions",
                              f"class {names[c]}, probe image {int(members[0])}: the channels' contributions to its predicted class",
                              lambda i=int(members[0]): chf.contribution_bars(run, i, dpi=dpi)))
    twin = stored_twin(run) if "twin" in run.attachments else None
    if twin is not None:
        from . import _twin_figure as twin_plots

        for view, caption, draw in (
                ("graph", "the causal graph NOTEARS found over the twin's concepts, residual latents and the logit", twin_plots.twin_graph_figure),
                ("effects", "the logit's change per unit of each concept: direct and mediated (equations), total (decoded counterfactuals)",
                 twin_plots.twin_effects_figure),
                ("counterfactuals", "do(concept = v): decoded, re-measured and classified", twin_plots.twin_counterfactuals_figure)):
            tasks.append(("twin", f"twin-{view}", f"twin-{view}", caption, lambda draw=draw: draw(twin, dpi=dpi)))
    panels = stored_xfeatures(run) if PANEL_ATTACHMENT in run.attachments else []
    for p in panels:
        tasks.append(("xfeatures", f"xfeatures-{tag_name(names[p.class_index])}", "xfeatures",
                      f"class {names[p.class_index]}: {p.n_x} x-features, their top probe images and GradCAM maps; bars: contributions "
                      "that sum with the bias to the explained score",
                      lambda p=p: plot_xfeatures(p, run.images, names[p.class_index], dpi=dpi)))

    blocks: dict[str, list[str]] = {}
    for section, view_id, kind, caption, make in tqdm(tasks, desc="i2x report", unit="view", file=sys.stderr, disable=not progress):
        blocks.setdefault(section, []).append(_figure_html(view_id, kind, plots.to_png(make()), caption))

    title = f"I2X report: {run.path.name if run.path.name != 'i2x' else run.path.parent.name}"
    out = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(str(run.path))}: {run.num_checkpoints} checkpoints, {run.num_prototypes} prototypes, '
        f"{run.num_probe} probe images, {run.num_classes} classes, target layer "
        f"<code>{html.escape(str(run.config.target_layer if run.config else None))}</code>; generated "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}</p>",
        '<nav><a href="#summary">findings</a><a href="#overview">prototypes</a><a href="#pairs">confused pairs</a>'
        '<a href="#classes">classes</a>' + ('<a href="#sag">minimal sufficient explanations</a>' if sags else "")
        + ('<a href="#channels">channels</a>' if channels else "")
        + ('<a href="#twin">causal twin</a>' if twin is not None else "")
        + ('<a href="#xfeatures">x-features</a>' if panels else "") + "</nav>",
    ]
    if not has_images:
        out.append('<p class="note">This run holds no probe images (store_probe_images=False, or a probe over 64 MiB): '
                   "the prototype gallery and the saliency overlays are left out.</p>")
    if run.errors:
        out.append(f'<p class="note">{len(run.errors)} explainer errors recorded; first: '
                   f"{html.escape(run.errors[0]['type'])}: {html.escape(run.errors[0]['message'])}</p>")
    out += ['<section id="summary"><h2>Findings</h2>', _md(expl.to_markdown(), demote=1), "</section>"]
    out += ['<section id="overview"><h2>Prototypes and coefficients</h2>', *blocks.get("overview", []), "</section>"]
    out += ['<section id="pairs"><h2>Confused pairs</h2>',
            *(blocks.get("pairs") or ['<p class="note">no confused pair: no uncertain prototype and no confusion on the probe</p>']),
            "</section>", '<section id="classes"><h2>Classes</h2>']
    for c in chosen:
        out += [f'<article class="class" id="class-{html.escape(tag_name(names[c]))}">',
                _md(expl.class_markdown(c)), *blocks.get(f"class-{c}", []), "</article>"]
    out.append("</section>")
    if sags:
        out += ['<section id="sag"><h2>Minimal sufficient explanations</h2>',
                "<p>Sets of regions that, shown alone (the rest blurred), keep at least "
                f"{sags[0].sag.fraction:.0%} of the model's probability for the class (SAG, NeurIPS 2021).</p>"]
        for i, s in enumerate(sags):
            g = s.sag
            lines = "".join(f"<li>{html.escape(t)}</li>" for t in g.mse_lines()) or "<li>none found</li>"
            out += [f'<article class="class" id="sag-{html.escape(tag_name(names[s.cls]))}">',
                    f"<h3>{html.escape(names[s.cls])}: probe image {s.image}</h3>",
                    f"<p>full image p={g.full_probability:.2f}, blurred p={g.baseline_probability:.2f}; "
                    f"{len(g.all_mses)} minimal sufficient explanations found, the roots:</p><ul>{lines}</ul>",
                    *blocks.get(f"sag-{i}", []), "</article>"]
        out.append("</section>")
    if channels:
        out += ['<section id="channels"><h2>Disentangled channels</h2>',
                "<p>The target layer's channels unmixed by EPIC's orthogonal U (InfoDisentMeasure); the head becomes A U^T, so "
                "each prediction is unchanged and equals the sum of the channels' contributions plus the bias.</p>",
                *blocks.get("channels", []), "</section>"]
    if twin is not None:
        out += ['<section id="twin"><h2>Causal twin surrogate</h2>',
                "<p>A small VAE distilled from the classifier with its first latents aligned to measured concepts, a causal graph "
                "over them (NOTEARS) and interventions decoded and re-measured (GLANCE-inspired, not a reproduction).</p>",
                _md(twin.to_markdown()), *blocks.get("twin", []), "</section>"]
    if panels:
        rows = "".join(f"<tr><td>{html.escape(names[p.class_index])}</td><td>{p.n_x}</td><td>{p.r2:.3f}</td></tr>" for p in panels)
        out += ['<section id="xfeatures"><h2>X-features</h2>',
                "<p>A few concepts per class whose contributions sum, with a bias, to the network's score for it (XNN's "
                "sparse reconstruction autoencoder on the pooled target-layer features, fitted on the final model).</p>",
                f"<table><tr><th>class</th><th>n_x</th><th>held-out R²</th></tr>{rows}</table>",
                *blocks.get("xfeatures", []), "</section>"]
    out += [f"<script>{_SCRIPT}</script>", "</body></html>"]
    return "\n".join(out)


def write_report(run: I2XRun | str | Path, out: str | Path, **kw) -> Path:
    """Build the report of ``run`` (an ``I2XRun`` or its directory) and write it atomically to
    ``out``; ``kw`` go to ``build_report``. Returns the path written."""
    if not isinstance(run, I2XRun):
        run = I2XRun.load(run)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, build_report(run, **kw).encode("utf-8"))
    return out
