"""SAG's searches as generators that ask for probabilities, and a driver that batches the asks of many images."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import torch

from ...perturb import apply_mask, target_probabilities

__all__ = ["Search", "beam_search", "build_graph", "Prober", "drive"]

Request = list  # list[frozenset[int]] of region indices
Search = Generator[Request, list, Any]


def _prune(sets: list[frozenset], probs: list[float], thr: float) -> Search:
    """Drop regions from each sufficient set while it stays sufficient: each round scores every
    single-region removal of every set in one request and keeps the most probable sufficient one,
    until no removal is sufficient (a 1-minimal set: with a model that never loses probability when
    shown more, no subset at all is sufficient)."""
    cur = list(zip(sets, probs))
    done: list[tuple[frozenset, float]] = [None] * len(cur)  # type: ignore[list-item]
    active = list(range(len(cur)))
    while active:
        req = []
        for i in active:
            req += [cur[i][0] - {r} for r in sorted(cur[i][0])]
        got = yield req
        table = dict(zip(req, got))
        still = []
        for i in active:
            s, p = cur[i]
            best = max(((table[s - {r}], -r, s - {r}) for r in sorted(s)), default=None)
            if best is not None and best[0] >= thr:
                cur[i] = (best[2], best[0])
                still.append(i)
            else:
                done[i] = (s, p)
        active = still
    return done


def beam_search(n_regions: int, thr: float, beam_width: int, max_size: int, max_roots: int,
                 size_slack: int | None = None) -> Search:
    """SAG's beam search over region indices 0..n-1; returns {MSE: probability}. It stops
    ``size_slack`` sizes after the first size that yielded an MSE (None: no such bound)."""
    empty = frozenset()
    (p0,) = yield [empty]
    if p0 >= thr:  # the blurred image alone suffices: the empty set is the one MSE
        return {empty: p0}
    roots: dict[frozenset, float] = {}
    beam = [empty]
    first = None  # the size at which the first MSE turned up
    for size in range(1, max_size + 1):
        cands = sorted({s | {r} for s in beam for r in range(n_regions) if r not in s}, key=lambda s: sorted(s))
        if not cands:
            break
        probs = yield cands
        order = sorted(zip(cands, probs), key=lambda cp: (-cp[1], sorted(cp[0])))
        sufficient, beam = [], []
        for c, p in order:
            if p >= thr:
                # a candidate holding a root already found is not minimal: no need to prune it
                if not any(r <= c for r in roots):
                    sufficient.append((c, p))
            elif len(beam) < beam_width:
                beam.append(c)
        if sufficient:
            pruned = yield from _prune([c for c, _ in sufficient], [p for _, p in sufficient], thr)
            for m, p in pruned:
                roots.setdefault(m, p)
        if roots and first is None:
            first = size
        if len(roots) >= max_roots or not beam or (first is not None and size_slack is not None and size - first >= size_slack):
            break
    return roots


def build_graph(roots: list[frozenset], root_probs: list[float], floor_thr: float, max_children: int | None,
           max_nodes: int) -> Search:
    """SAG's graph: an expanded node's children each drop one of its regions; a node is expanded
    when its probability is above ``floor_thr`` and it holds two regions or more. All of a level's
    children are scored in one request; each parent keeps the ``max_children`` whose removal costs
    the most probability (the informative edges; None keeps all), and no node is added past
    ``max_nodes``. Returns ({node: probability}, [(parent, child, removed index)])."""
    nodes = dict(zip(roots, root_probs))
    edges: list[tuple[frozenset, frozenset, int]] = []
    expanded: set = set()
    frontier = [r for r in roots if nodes[r] > floor_thr and len(r) > 1]
    while frontier and len(nodes) < max_nodes:
        pairs = [(p, p - {r}, r) for p in frontier for r in sorted(p)]
        expanded.update(frontier)
        new = sorted({c for _, c, _ in pairs if c not in nodes}, key=lambda s: sorted(s))
        got = (yield new) if new else []
        scored = dict(zip(new, got))
        prob = lambda c: nodes[c] if c in nodes else scored[c]  # noqa: E731
        kept = []
        for p in frontier:
            mine = sorted(((p - {r}, r) for r in sorted(p)), key=lambda cr: (prob(cr[0]), cr[1]))
            kept += [(p, c, r) for c, r in (mine if max_children is None else mine[:max_children])]
        level = []
        for p, c, r in kept:
            if c not in nodes:
                if len(nodes) >= max_nodes:
                    continue
                nodes[c] = scored[c]
                level.append(c)
            edges.append((p, c, r))
        frontier = sorted({c for _, c, _ in kept if c in nodes and c not in expanded and nodes[c] > floor_thr and len(c) > 1},
                          key=lambda s: sorted(s))
    return nodes, edges


class Prober:
    """Scores region sets of several images: builds the masked copies chunk by chunk (at most
    ``batch_size`` at a time) and sends them through ``target_probabilities``; remembers every
    answer, so no set is scored twice."""

    def __init__(self, model, images, labels, masks, fill_images, batch_size, forward_fn):
        self.model, self.images, self.labels = model, images, labels
        self.masks = masks  # list of (R_i, H*W) float tensors
        self.fills = fill_images
        self.batch_size, self.forward_fn = batch_size, forward_fn
        self.cache: list[dict] = [dict() for _ in range(len(images))]
        self.evaluations = [0] * len(images)

    def __call__(self, requests: list[tuple[int, list[frozenset]]]) -> list[list[float]]:
        todo = []
        for i, sets in requests:
            seen = set()
            for s in sets:
                if s not in self.cache[i] and s not in seen:
                    seen.add(s)
                    todo.append((i, s))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            idx = torch.tensor([i for i, _ in chunk], device=self.images.device)
            member = [torch.zeros(self.masks[i].shape[0]) for i, _ in chunk]
            for m, (_, s) in zip(member, chunk):
                m[list(s)] = 1.0
            shown = torch.stack([m.to(self.masks[i]) @ self.masks[i] for m, (i, _) in zip(member, chunk)]) > 0
            hidden = ~shown.view(len(chunk), *self.images.shape[2:])
            batch = apply_mask(self.images[idx], hidden, self.fills[idx])
            probs = target_probabilities(self.model, batch, self.labels[idx], batch_size=self.batch_size,
                                         forward_fn=self.forward_fn).cpu().tolist()
            for (i, s), p in zip(chunk, probs):
                self.cache[i][s] = float(p)
                self.evaluations[i] += 1
        return [[self.cache[i][s] for s in sets] for i, sets in requests]


def drive(searches: list[Search | None], prober: Prober) -> list[Any]:
    """Run every image's search in lock step: each round, every request of every search goes
    through the model together."""
    results: list[Any] = [None] * len(searches)
    pending: dict[int, list] = {}
    for i, gen in enumerate(searches):
        if gen is None:
            continue
        try:
            pending[i] = next(gen)
        except StopIteration as stop:
            results[i] = stop.value
    while pending:
        keys = list(pending)
        answers = prober([(i, pending[i]) for i in keys])
        for i, ans in zip(keys, answers):
            try:
                pending[i] = searches[i].send(ans)  # type: ignore[union-attr]
            except StopIteration as stop:
                results[i] = stop.value
                del pending[i]
    return results


