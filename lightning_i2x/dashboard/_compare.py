"""Two runs side by side on the same probe (before and after a repair, two seeds), or one run at
two checkpoints: what each predicts at its checkpoint, and which probe images the second gets
right that the first got wrong, and the reverse. One request per pair of checkpoints, small."""

from __future__ import annotations

import numpy as np

from ._runs import Snapshot

__all__ = ["probe_mismatch", "compare", "MAX_LISTED"]

MAX_LISTED = 48  # probe images listed per kind of change (the count is always whole)


def probe_mismatch(a: Snapshot, b: Snapshot) -> str | None:
    """Why two runs cannot be compared image by image (None: they share their probe): other
    classes, other labels, or another probe fingerprint where both recorded one."""
    ra, rb = a.run, b.run
    if ra.class_names != rb.class_names:
        return f"the runs have other classes ({ra.class_names[:5]}... vs {rb.class_names[:5]}...)"
    if ra.num_probe != rb.num_probe or not np.array_equal(ra.labels, rb.labels):
        return f"the runs have other probe sets ({ra.num_probe} vs {rb.num_probe} images, or other labels)"
    fa, fb = ra.fingerprint.get("probe"), rb.fingerprint.get("probe")
    if fa is not None and fb is not None and fa != fb:
        return "the runs have other probe images (their probe fingerprints differ)"
    return None


def _at(snap: Snapshot, t: int) -> np.ndarray:
    if not 0 <= t < snap.run.num_checkpoints:
        raise LookupError(f"no checkpoint {t} in {snap.run.path.name}; it holds 0..{snap.run.num_checkpoints - 1}")
    return snap.run.confidences()[t]


def _listed(ids: np.ndarray) -> dict:
    return {"count": int(ids.size), "images": [int(i) for i in ids[:MAX_LISTED]]}


def compare(a: Snapshot, t: int, b: Snapshot, u: int) -> dict:
    """Run a at checkpoint t next to run b at checkpoint u (same probe: ``probe_mismatch``): the
    mean confidence of the true class per class and the accuracy of each, the images b predicts
    right that a predicted wrong (``fixed``), the reverse (``broken``), and how many changed class."""
    ca, cb = _at(a, t), _at(b, u)
    labels = a.run.labels
    pa, pb = ca.argmax(axis=1), cb.argmax(axis=1)
    right_a, right_b = pa == labels, pb == labels

    def per_class(conf: np.ndarray) -> list:
        true = conf[np.arange(labels.shape[0]), labels]
        return [round(float(true[labels == c].mean()), 5) if (labels == c).any() else None for c in range(a.run.num_classes)]

    return {
        "checkpoints": [t, u],
        "accuracy": [round(float(right_a.mean()), 5), round(float(right_b.mean()), 5)],
        "confidence": [per_class(ca), per_class(cb)],
        "fixed": _listed(np.flatnonzero(~right_a & right_b)),
        "broken": _listed(np.flatnonzero(right_a & ~right_b)),
        "changed": int((pa != pb).sum()),
    }
