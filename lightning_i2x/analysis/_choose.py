"""Choosing what is worth showing or targeting: class pairs by name or index, the pairs and
classes a view draws, the prototypes a gallery shows. Pure functions of an explanation and arrays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._explanation import Explanation

__all__ = ["Pair", "resolve_pairs", "pair_prototypes", "select_pairs", "select_classes", "select_prototypes", "class_rows",
           "competing_class", "pair_rows"]

Pair = tuple[int, int]


def resolve_pairs(pairs: Iterable[Sequence[int | str]], class_names: Sequence[str]) -> list[Pair]:
    """Class pairs given by index or name, as sorted index pairs (duplicates dropped, order kept).

    Raises ValueError naming every unknown class and listing the run's classes."""
    names = [str(c) for c in class_names]
    m = len(names)
    out: list[Pair] = []
    unknown: list[str] = []
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"each pair must be two classes (a, b), got {pair!r}")
        idx = []
        for c in pair:
            if isinstance(c, str):
                if c in names:
                    idx.append(names.index(c))
                elif c.lstrip("-").isdigit() and 0 <= int(c) < m and c not in names:
                    idx.append(int(c))
                else:
                    unknown.append(repr(c))
            elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= int(c) < m:
                idx.append(int(c))
            else:
                unknown.append(repr(c))
        if len(idx) == 2:
            if idx[0] == idx[1]:
                raise ValueError(f"pair {pair!r} names the same class twice; a pair needs two different classes")
            p = (min(idx), max(idx))
            if p not in out:
                out.append(p)
    if unknown:
        raise ValueError(
            f"pairs name unknown classes {', '.join(dict.fromkeys(unknown))}; the run's classes are "
            f"{names} (by name, or by index 0..{m - 1})"
        )
    return out


def pair_prototypes(uncertain: Iterable[Any], pairs: Sequence[Pair]) -> dict[Pair, list[int]]:
    """The uncertain prototypes of each pair, best first (``uncertain``: ``Explanation.uncertain``)."""
    out: dict[Pair, list[int]] = {p: [] for p in pairs}
    for u in uncertain:
        key = (min(u.classes), max(u.classes))
        if key in out and int(u.prototype) not in out[key]:
            out[key].append(int(u.prototype))
    return out


def select_pairs(expl: Explanation, latest_confidences: np.ndarray | None, max_pairs: int) -> list[Pair]:
    """The confused pairs worth drawing (at most ``max_pairs``): those with uncertain prototypes,
    best first, then the pairs the latest checkpoint confuses most often (probe samples of one
    class predicted as the other, both ways). ``latest_confidences``: (N, M), None before a record."""
    pairs = [tuple(p) for p in expl.uncertain_pairs()]
    if latest_confidences is not None:
        m = expl.num_classes
        pred = np.asarray(latest_confidences).argmax(axis=1)
        counts = np.zeros((m, m), np.int64)
        np.add.at(counts, (expl.labels, pred), 1)
        both = np.triu(counts + counts.T, 1)
        for flat in np.argsort(-both, axis=None, kind="stable"):
            a, b = divmod(int(flat), m)
            if both[a, b] == 0:
                break
            if (a, b) not in pairs:
                pairs.append((a, b))
    return pairs[:max_pairs]


def select_classes(expl: Explanation, latest_confidences: np.ndarray | None, *, classes: Sequence[int | str] | None = None,
                   max_classes: int = 3, max_pairs: int = 3) -> list[int]:
    """The classes worth drawing: ``classes`` when given (pinned by the user), else up to
    ``max_classes`` from the pairs drawn, then the classes whose probe samples are least confident."""
    if classes is not None:
        return [expl.class_index(c) for c in classes]
    chosen: list[int] = []
    for pair in select_pairs(expl, latest_confidences, max_pairs):
        chosen += [c for c in pair if c not in chosen]
    if latest_confidences is not None:
        labels = expl.labels
        true = np.asarray(latest_confidences)[np.arange(labels.shape[0]), labels]
        mean = [float(true[labels == c].mean()) if (labels == c).any() else np.inf for c in range(expl.num_classes)]
        chosen += [int(c) for c in np.argsort(mean, kind="stable") if c not in chosen and np.isfinite(mean[c])]
    return chosen[:max_classes]


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


def class_rows(expl: Explanation, c: int | str, max_rows: int) -> list[tuple[int, str]]:
    """The prototypes a class view (Fig. 3) shows, each with its kind (``"shared"``,
    ``"specialised"`` or ``""``): shared, specialised, those on the class's graph edges (largest
    coefficient first), then the largest coefficients on the class; at most ``max_rows``."""
    ci = expl.class_index(c)
    shared, special = expl.shared_prototypes(ci), expl.specialised_prototypes(ci)
    on_edges = sorted({k for e in expl.edges(ci) for k in e[3]})
    magnitude = np.abs(expl.beta[:, :, ci]).max(axis=0) if expl.num_intervals else np.zeros(expl.num_prototypes)
    rest = [int(k) for k in np.argsort(-magnitude, kind="stable") if magnitude[k] > 0]
    rows: list[int] = []
    for k in [*shared, *special, *sorted(on_edges, key=lambda k: -magnitude[k]), *rest]:
        if k not in rows:
            rows.append(k)
    kind = {**{k: "shared" for k in shared}, **{k: "specialised" for k in special}}
    return [(k, kind.get(k, "")) for k in rows[:max_rows]]


def competing_class(expl: Explanation, t: int, k: int, c: int) -> int | None:
    """Fig. 3's cell label: where prototype k moved class c's confidence past tau in interval t,
    the class it moved the other way the most, when that move passes tau too; else None."""
    v, tau = expl.beta[t, k, c], expl.thresholds[t]
    others = [b for b in range(expl.num_classes) if b != c]
    if abs(v) <= tau or not others:
        return None
    col = expl.beta[t, k, others]
    b = others[int(np.argmin(col))] if v > 0 else others[int(np.argmax(col))]
    return b if (v > 0 and expl.beta[t, k, b] < -tau) or (v < 0 and expl.beta[t, k, b] > tau) else None


def pair_rows(expl: Explanation, a: int | str, b: int | str, max_rows: int) -> tuple[list[int], dict[int, int]]:
    """The prototypes a pair view (Fig. 5) shows: the pair's uncertain ones first (best first),
    then those separating a from b above tau in some interval, largest difference first; at most
    ``max_rows``. Also {uncertain prototype: flips}."""
    ai, bi = expl.class_index(a), expl.class_index(b)
    unc = {u.prototype: u.flips for u in expl.uncertain if set(u.classes) == {ai, bi}}
    if not expl.num_intervals:
        return list(unc)[:max_rows], unc
    diff = expl.beta[:, :, ai] - expl.beta[:, :, bi]
    over = np.abs(diff) > expl.thresholds[:, None]
    involved = [int(k) for k in np.argsort(-np.abs(diff).max(axis=0), kind="stable") if over[:, k].any() and k not in unc]
    return [*unc, *involved][:max_rows], unc
