"""The class and pair pages' data: the evolution grid (Fig. 3) and the checkpoint graph (Fig. 4)
of a class, the pair view (Fig. 5) of two classes, as small JSON the page draws as SVG. The rows
are those the static figures show (``analysis.class_rows`` / ``pair_rows``), so both agree."""

from __future__ import annotations

import numpy as np

from ..analysis import class_rows, competing_class, pair_rows
from ._runs import Snapshot

__all__ = ["class_page", "pair_page", "MAX_ROWS"]

MAX_ROWS = 24  # prototypes per grid: twice the static figures' (the page scrolls)


def _round(a) -> list:
    return [None if not np.isfinite(x) else round(float(x), 5) for x in np.asarray(a, dtype=np.float64)]


def _class(snap: Snapshot, c: int) -> int:
    if not 0 <= c < snap.run.num_classes:
        raise LookupError(f"no class {c}; the run's classes are 0..{snap.run.num_classes - 1}")
    return c


def class_page(snap: Snapshot, c: int) -> dict:
    """Class c's page: per shown prototype its coefficient on c in every interval and the
    competing class of each cell past tau (Fig. 3); per interval the classes that lost confidence
    to c and through which prototypes (Fig. 4); the uncertain pairs c is in."""
    c = _class(snap, c)
    expl, note = snap.explanation()
    out = {"class": c, "note": note, "thresholds": [], "rows": [], "graph": [], "pairs": [], "shared": [], "specialised": []}
    if expl is None:
        return out
    t_ = expl.num_intervals
    rows = []
    for k, kind in class_rows(expl, c, MAX_ROWS):
        rows.append({"prototype": k, "kind": kind, "beta": _round(expl.beta[:, k, c]),
                     "against": [competing_class(expl, t, k, c) for t in range(t_)]})
    graph: list[dict] = [{"interval": t, "sources": []} for t in range(t_)]
    for t, b, _, ks in expl.edges(c):
        graph[t]["sources"].append({"class": b, "prototypes": ks})
    for g in graph:
        g["sources"].sort(key=lambda e: -len(e["prototypes"]))
    out.update(thresholds=_round(expl.thresholds), rows=rows, graph=graph, shared=expl.shared_prototypes(c),
               specialised=expl.specialised_prototypes(c), pairs=[list(p) for p in expl.uncertain_pairs() if c in p])
    return out


def pair_page(snap: Snapshot, a: int, b: int) -> dict:
    """The pair (a, b)'s page: every prototype that separated them (``beta[t][k, a] - beta[t][k, b]``
    per interval, which intervals pass tau), the uncertain ones first with their flips (Fig. 5)."""
    a, b = _class(snap, a), _class(snap, b)
    if a == b:
        raise LookupError(f"a pair is two different classes, got {a} twice")
    expl, note = snap.explanation()
    out = {"classes": [a, b], "note": note, "thresholds": [], "rows": []}
    if expl is None:
        return out
    rows, unc = pair_rows(expl, a, b, MAX_ROWS)
    diff = expl.beta[:, :, a] - expl.beta[:, :, b]
    over = np.abs(diff) > expl.thresholds[:, None]
    out.update(thresholds=_round(expl.thresholds), rows=[
        {"prototype": k, "flips": unc.get(k), "diff": _round(diff[:, k]), "over": [bool(x) for x in over[:, k]]} for k in rows])
    return out
