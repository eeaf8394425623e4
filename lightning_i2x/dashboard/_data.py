"""What each view of the dashboard receives: small JSON documents built on demand from one
snapshot of a run (never the N x T maps: one image's maps, one prototype's series), and the
pictures as PNG (a prototype's patches as one sprite, a probe image)."""

from __future__ import annotations

import math

import numpy as np

from ..measures import stored_twin
from ..store import MANIFEST
from ..viz import display_images, extract_patch, nearest_locations, patch_box
from ..xfeatures import PANEL_ATTACHMENT, stored_xfeatures
from ._png import png_bytes
from ._runs import Snapshot

__all__ = ["overview", "explanation", "xfeatures", "prototype", "image", "sprite_png", "image_png", "twin_png", "served_files", "marks", "PATCHES",
           "MAX_HOLDERS", "TWIN_VIEWS"]

TWIN_VIEWS = ("graph", "effects", "counterfactuals")

PATCHES = 16  # patches per prototype sprite
MAX_HOLDERS = 48  # probe images listed on a prototype page
GAP = 2  # pixels between the sprite's patches


IMAGE_DIGITS = 3  # decimals of an image page's numbers: what the page shows (its figures carry 3)


def _f(x, digits: int = 5) -> float | int | None:
    """A float for JSON, rounded to ``digits`` decimals (an integral value as an int: ``0``, not
    ``0.0``); NaN and infinities become null."""
    x = float(x)
    if not math.isfinite(x):
        return None
    x = round(x, digits)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def _fl(a, digits: int = 5) -> list:
    """A nested list of floats for JSON (rounded as ``_f`` rounds, NaN as null)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return _f(a, digits)
    return [_fl(x, digits) for x in a] if a.ndim > 1 else [_f(x, digits) for x in a]


def marks(snap: Snapshot) -> dict[str, str]:
    return {str(k): v for k, v in snap.run.marks().items()}


def served_files(snap: Snapshot) -> list[str]:
    """The run's files a client may download: the manifest, the probe and what the manifest lists."""
    m = snap.run.manifest
    files = [MANIFEST, "probe.npz", *([m["probe_images"]] if m.get("probe_images") else []), *(c["file"] for c in m["checkpoints"]), *(a["file"] for a in m.get("attachments", {}).values())]
    if m.get("prototypes"):
        files.append(m["prototypes"]["file"])
    return files


def _image_shape(snap: Snapshot) -> list[int] | None:
    return None if snap.run.images is None else [int(s) for s in snap.run.images.shape[2:]]


def overview(snap: Snapshot, name: str) -> dict:
    """The first view: confidence per class over the checkpoints, per-prototype counts, the marks
    and what the measures stored. Only what the run holds: the explanation (Steps 4-6, far
    dearer than loading the run) comes on its own route, ``explanation``."""
    run = snap.run
    conf = run.confidences()
    labels = run.labels
    per_class = []
    for c in range(run.num_classes):
        members = labels == c
        per_class.append(conf[:, members, c].mean(axis=1) if members.any() and conf.shape[0] else np.full(conf.shape[0], np.nan))
    accuracy = (conf.argmax(axis=2) == labels).mean(axis=1) if conf.shape[0] else np.zeros(0)
    assignment = snap.assignment()
    holding = (np.zeros(run.num_prototypes, int) if assignment is None else
               np.bincount((assignment + np.arange(run.num_probe)[:, None] * run.num_prototypes).ravel(),
                           minlength=run.num_probe * run.num_prototypes).reshape(run.num_probe, -1).astype(bool).sum(axis=0))
    return {
        "name": name,
        "class_names": run.class_names,
        "checkpoints": run.checkpoints,
        "num_probe": run.num_probe,
        "num_prototypes": run.num_prototypes,
        "feature_shape": list(run.feature_shape),
        "image_shape": _image_shape(snap),
        "has_prototypes": assignment is not None,
        "reference": run.reference,
        "confidence": _fl(np.array(per_class).reshape(run.num_classes, -1)),
        "accuracy": _fl(accuracy),
        "channels": _channels(run),
        "holding": [int(x) for x in holding],
        "marks": marks(snap),
        "errors": len(run.errors),
        "files": served_files(snap),
        "twin": _twin_summary(snap),
        "xfeatures": xfeatures(snap),
    }


def explanation(snap: Snapshot) -> dict:
    """The overview's explanation, asked for after the first view is drawn: the uncertain
    prototypes grouped by prototype (one row each, its pairs inside), the suspects and the
    learning order; or None and why there is none yet (``note``)."""
    expl, note = snap.explanation()
    if expl is None:
        return {"explanation": None, "note": note}
    uncertain: dict[int, dict] = {}
    for u in expl.uncertain:
        row = uncertain.setdefault(u.prototype, {"prototype": u.prototype, "score": _f(u.score), "pairs": []})
        row["pairs"].append({"classes": list(u.classes), "flips": int(u.flips), "score": _f(u.score)})
    return {"explanation": {
        "num_intervals": expl.num_intervals,
        "uncertain": list(uncertain.values()),
        "learning_order": [{"classes": list(s.classes), "interval": s.interval} for s in expl.learning_order()],
        "suspects": None if expl.suspects is None else list(expl.suspects),
    }, "note": None}


def _twin(snap: Snapshot):
    return snap.memo(("twin",), lambda: stored_twin(snap.run) if "twin" in snap.run.attachments else None)


def _twin_summary(snap: Snapshot) -> dict | None:
    """What a ``TwinMeasure`` stored, as the overview's card shows it (None without one)."""
    t = _twin(snap)
    if t is None:
        return None
    return {"target": t.target, "fidelity": _f(t.fidelity), "reconstruction_fidelity": _f(t.reconstruction_fidelity),
            "concepts": [{"name": c, "alignment_r2": _f(t.alignment_r2[c]), "intended": _f(t.intended[c]),
                          **{k: _f(v) for k, v in t.effects[c].items()}} for c in t.concepts],
            "edges": [{"from": a, "to": b, "weight": _f(w)} for a, b, w in t.edges()], "views": list(TWIN_VIEWS)}


def twin_png(snap: Snapshot, view: str) -> bytes:
    """One figure of the stored twin (``TWIN_VIEWS``) as PNG."""
    t = _twin(snap)
    if t is None:
        raise LookupError("this run holds no twin (add TwinMeasure() to I2XCallback(measures=[...]))")
    if view not in TWIN_VIEWS:
        raise LookupError(f"no twin view {view!r}; the views are {list(TWIN_VIEWS)}")

    def draw():
        from ..viz import to_png, twin_counterfactuals_figure, twin_effects_figure, twin_graph_figure

        fig = {"graph": twin_graph_figure, "effects": twin_effects_figure, "counterfactuals": twin_counterfactuals_figure}[view](t)
        return to_png(fig)
    return snap.memo(("twin_png", view), draw)


def xfeatures(snap: Snapshot, bar_images: int = 3) -> list[dict] | None:
    """The stored x-feature panels (``XFeatureMeasure``), None when the run holds none: per class
    n_x, held-out R^2, each x-feature's top probe images and the contribution bars of the probe
    images the network scores highest."""
    run = snap.run
    if PANEL_ATTACHMENT not in run.attachments:
        return None
    out = []
    for p in stored_xfeatures(run):
        top = np.argsort(-p.score, kind="stable")[:bar_images]
        out.append({"class": p.class_index, "n_x": p.n_x, "r2": _f(p.r2), "top_images": p.top_images.tolist(),
                    "bars": [{"image": int(i), "contributions": _fl(p.contributions[i]), "bias": _f(p.bias),
                              "explained": _f(p.explained[i]), "score": _f(p.score[i])} for i in top]})
    return out


def _locations(snap: Snapshot, k: int) -> list[tuple[int, int, int]]:
    def compute():
        run = snap.run
        saliency = run.cams()[run.reference] if snap.distances() is None else None
        return nearest_locations(snap.assignment().reshape(run.num_probe, *run.feature_shape), snap.distances(), k, PATCHES, saliency)
    return snap.memo(("locations", k), compute)


def _check_prototype(snap: Snapshot, k: int) -> None:
    if snap.assignment() is None:
        raise LookupError("the run has no prototypes yet")
    if not 0 <= k < snap.run.num_prototypes:
        raise LookupError(f"no prototype {k}; the run's prototypes are 0..{snap.run.num_prototypes - 1}")


def prototype(snap: Snapshot, k: int) -> dict:
    """One prototype's page: where its patches come from, its intensity over the checkpoints, its
    ridge coefficients per class and interval, the classes sharing or specialising it, its reliance
    and suspect status, its mark, and the probe images holding it with their cells."""
    _check_prototype(snap, k)
    run = snap.run
    mask = snap.assignment() == k
    count = mask.sum(axis=1)
    holders = np.flatnonzero(count)
    t_ = run.num_checkpoints
    if holders.size and t_:
        cams = run.cams().reshape(t_, run.num_probe, -1)[:, holders]
        inten = (cams * mask[holders]).sum(axis=2) / count[holders]  # (T, holders)
        mean = inten.mean(axis=1)
        order = holders[np.argsort(-inten[-1], kind="stable")]
        last = dict(zip(holders.tolist(), inten[-1].tolist()))
    else:
        mean, order, last = np.full(t_, np.nan), holders, {}
    expl, note = snap.explanation()
    rel = snap.reliance()
    ph, pw = (None, None) if run.images is None else patch_box(0, 0, run.feature_shape, run.images.shape[2:])[2:]
    out = {
        "prototype": k,
        "patches": [{"image": s, "cell": [i, j]} for s, i, j in _locations(snap, k)] if run.images is not None else [],
        "patch_size": [ph, pw],
        "patch_gap": GAP,
        "intensity": _fl(mean),
        "num_holding": int(holders.size),
        "holding_per_class": [int(x) for x in np.bincount(run.labels[holders], minlength=run.num_classes)],
        "holders": [{"image": int(s), "label": int(run.labels[s]), "cells": np.flatnonzero(mask[s]).tolist(), "intensity": _f(last.get(int(s), np.nan))}
                    for s in order[:MAX_HOLDERS]],
        "mark": run.marks().get(k),
        "note": note,
        "beta": None, "thresholds": None, "shared_in": [], "specialised_in": [], "uncertain": [], "suspect": None,
        "reliance": None if rel is None else {"reliance": _f(rel.reliance[k]), "drop": _f(rel.drop[k]),
                                               "random_drop": _f(rel.random_drop[k]), "count": int(rel.count[k])},
    }
    if expl is not None:
        classes = snap.memo("classes", lambda: ([expl.shared_prototypes(c) for c in range(run.num_classes)],
                                                [expl.specialised_prototypes(c) for c in range(run.num_classes)]))
        out.update(
            beta=_fl(expl.beta[:, k, :]), thresholds=_fl(expl.thresholds),
            shared_in=[c for c, ks in enumerate(classes[0]) if k in ks],
            specialised_in=[c for c, ks in enumerate(classes[1]) if k in ks],
            uncertain=[{"classes": list(u.classes), "flips": int(u.flips), "score": _f(u.score)} for u in expl.uncertain if u.prototype == k],
            suspect=None if expl.suspects is None else k in expl.suspects,
        )
    return out


def sprite_png(snap: Snapshot, k: int) -> bytes:
    """The prototype's patches (nearest its centroid first) side by side in one PNG."""
    _check_prototype(snap, k)
    run = snap.run
    if run.images is None:
        raise LookupError("the run holds no probe images")
    locs = _locations(snap, k)
    big = run.images.shape[2:]
    ph, pw = patch_box(0, 0, run.feature_shape, big)[2:]
    sheet = np.ones((ph, max(1, len(locs)) * (pw + GAP) - GAP, 3), np.float32)
    if locs:
        shown = display_images(run.images[[s for s, _, _ in locs]])
        for n, (_, i, j) in enumerate(locs):
            sheet[:, n * (pw + GAP): n * (pw + GAP) + pw] = extract_patch(shown[n], patch_box(i, j, run.feature_shape, big))
    return png_bytes(sheet)


def _check_image(snap: Snapshot, i: int) -> None:
    if not 0 <= i < snap.run.num_probe:
        raise LookupError(f"no probe image {i}; the probe holds 0..{snap.run.num_probe - 1}")


def _channel_arrays(run) -> dict | None:
    found = run.attachment("infodisent") if "infodisent" in run.attachments else None
    return None if found is None else found[0]


def _channels(run, shown: int = 12) -> dict | None:
    """What an ``InfoDisentMeasure`` stored, for the overview: the channels that contribute most
    over the probe, each with its purity before/after EPIC and the class it weighs most."""
    a = _channel_arrays(run)
    if a is None:
        return None
    order = np.argsort(-np.abs(a["contributions"]).sum(0), kind="stable")[:shown]
    return {"channels": [{"channel": int(k), "purity_before": _f(a["purity_before"][k]), "purity_after": _f(a["purity_after"][k]),
                          "top_class": int(np.argmax(a["weight"][:, k]))} for k in order],
            "purity_before": _f(a["purity_before"].mean()), "purity_after": _f(a["purity_after"].mean()),
            "num_channels": int(a["weight"].shape[1])}


def _contributions(run, i: int, k: int = 8) -> dict | None:
    """Probe image ``i``'s largest positive and negative channel contributions to its predicted class."""
    a = _channel_arrays(run)
    if a is None:
        return None
    row, c = a["contributions"][i], int(a["predicted"][i])
    order = np.argsort(row)
    picked = [int(j) for j in np.concatenate([order[::-1][:k], order[:k]]) if row[j] != 0]
    return {"predicted": c, "bias": _f(a["bias"][c]), "logit": _f(row.sum() + a["bias"][c]),
            "bars": [{"channel": j, "value": _f(row[j])} for j in dict.fromkeys(picked)]}


def image(snap: Snapshot, i: int) -> dict:
    """One probe image's page: its maps at every checkpoint (h x w each), its cells' prototypes and
    distances, each prototype's intensity in it over the checkpoints, its confidences."""
    _check_image(snap, i)
    run = snap.run
    t_ = run.num_checkpoints
    cams = run.cams()[:, i].reshape(t_, -1) if t_ else np.zeros((0, int(np.prod(run.feature_shape))))
    a = snap.assignment()
    cells = None if a is None else a[i]
    dist = snap.distances()
    d = IMAGE_DIGITS  # this page is asked for once per probe image: the one-file report carries N of them
    intensity = {} if cells is None else {str(int(k)): _fl(cams[:, cells == k].mean(axis=1), d) for k in np.unique(cells)}
    return {
        "image": i,
        "label": int(run.labels[i]),
        "feature_shape": list(run.feature_shape),
        "image_shape": _image_shape(snap),
        "cams": _fl(cams, d),
        "cells": None if cells is None else cells.reshape(run.feature_shape).tolist(),
        "distances": None if dist is None else _fl(dist[i].reshape(-1), d),
        "intensity": intensity,
        "confidences": _fl(run.confidences()[:, i], d),
        "contributions": _contributions(run, i),
    }


def image_png(snap: Snapshot, i: int) -> bytes:
    """The probe image as the model saw it, min-max scaled (``viz.display_images``)."""
    _check_image(snap, i)
    if snap.run.images is None:
        raise LookupError("the run holds no probe images")
    return png_bytes(display_images(snap.run.images[i:i + 1])[0])
