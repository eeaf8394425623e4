"""``fit_twin``: the twin surrogate, the causal graph over its concepts and the interventions.

The steps (GLANCE-inspired, arXiv 2207.01917; a redesign for a CPU, not a reproduction):

1. the context of every image (``context``, the Morpho-MNIST measures by default) and the
   classifier's probabilities; a held-out share kept aside;
2. the twin surrogate trained on the rest (``_surrogate``);
3. on the held-out images, the nodes: each concept as measured, in its own units (what its
   aligned latent z_j = (c_j - mean) / std encodes), the residual latents, and the classifier's
   logit of ``target`` (log p / (1 - p)); NOTEARS (linear) over them with the logit a sink, its
   edges cut where the standardised coefficient (W_ij sd_i / sd_j) is below ``w_threshold``, so
   the cut does not depend on the concepts' units; then each node refitted on its parents by least squares (the structural equations). The measured
   values rather than the latents: the latents' alignment error would add noise to the concepts'
   variances, which is what orients NOTEARS' edges between two concepts (see the docs);
4. ``do(c_j = v)`` on ``effect_images`` held-out images for ``steps`` values of v (the concept's
   5th to 95th percentile): the node values are propagated to the descendants through the
   equations with each image's own residuals kept (a counterfactual), each image's latents set
   (z_j = standardised v) or shifted by the change, decoded, classified and re-measured; the
   first ``strip_images`` are kept as strips.

Effects per unit of each concept: from the equations, the direct (the edge to the logit) and the
total (all paths, (I - W)^-1), the mediated being their difference; from the classifier on the
decoded counterfactuals, the total (slope of the mean logit over v, descendants propagated) and the
direct (only z_j moved), the mediated again the difference.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from .._core import check_fraction, check_int, check_number
from .._model import ForwardFn, evaluation_mode, forward, model_device, preserved_rng, preserved_training_state, split_item
from ._morpho import ContextFn, as_images, morpho_measures
from ._notears import fit_linear_sem, notears_linear
from ._surrogate import SurrogateLosses, batched, r2_score, train_surrogate

__all__ = ["TwinResult", "fit_twin", "LOGIT"]

LOGIT = "logit"


@dataclass(frozen=True)
class TwinResult:
    """What ``fit_twin`` found. ``nodes``: the concepts, the residual latents (``z<k>``) and
    ``"logit"``; ``graph[i, j]``: the refitted coefficient of the edge nodes[i] -> nodes[j] (0: no
    edge). ``effects[concept]``: the logit's change per unit of the concept, ``direct``,
    ``mediated``, ``total`` (from the equations) and ``decoded_direct``, ``decoded_mediated``,
    ``decoded_total`` (the classifier on decoded counterfactuals). ``counterfactuals[concept]``:
    ``values`` (V,), ``images`` (S, V, H, W) in [0, 1], ``measured`` (S, V) the decoded images'
    own concept, ``logit`` (S, V). ``intended[concept]``: the share of consecutive steps whose
    re-measured concept moved the way the intervention did. ``fidelity``: the twin head's
    agreement with the classifier on held-out images; ``reconstruction_fidelity``: the
    classifier's agreement with itself on the held-out images and their reconstructions."""

    concepts: tuple[str, ...]
    nodes: tuple[str, ...]
    graph: np.ndarray
    effects: dict[str, dict[str, float]]
    counterfactuals: dict[str, dict[str, np.ndarray]]
    intended: dict[str, float]
    fidelity: float
    reconstruction_fidelity: float
    alignment_r2: dict[str, float]
    target: int
    seconds: float
    params: dict = field(default_factory=dict)

    def edges(self) -> list[tuple[str, str, float]]:
        """(parent, child, coefficient) of every edge."""
        i, j = np.nonzero(self.graph)
        return [(self.nodes[a], self.nodes[b], float(self.graph[a, b])) for a, b in zip(i, j)]

    def has_edge(self, parent: str, child: str) -> bool:
        return bool(self.graph[self.nodes.index(parent), self.nodes.index(child)] != 0)

    def to_markdown(self) -> str:
        """The result as markdown: fidelity, alignment, the edges, the effects."""
        lines = [f"**Twin surrogate** (class {self.target}): fidelity {self.fidelity:.1%} on held-out images, "
                 f"reconstructions classified alike {self.reconstruction_fidelity:.1%}.", "",
                 "| concept | alignment R^2 | direct | mediated | total | decoded total | moved as intended |",
                 "|---|---|---|---|---|---|---|"]
        for c in self.concepts:
            e = self.effects[c]
            lines.append(f"| {c} | {self.alignment_r2[c]:.3f} | {e['direct']:+.3g} | {e['mediated']:+.3g} | {e['total']:+.3g} | "
                         f"{e['decoded_total']:+.3g} | {self.intended[c]:.0%} |")
        lines += ["", "Edges: " + (", ".join(f"{a} -> {b} ({w:+.2g})" for a, b, w in self.edges()) or "none")]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data for a JSON attachment (the images as nested lists, rounded)."""
        return {
            "concepts": list(self.concepts), "nodes": list(self.nodes), "graph": self.graph.round(6).tolist(),
            "effects": self.effects, "intended": self.intended, "fidelity": self.fidelity,
            "reconstruction_fidelity": self.reconstruction_fidelity, "alignment_r2": self.alignment_r2,
            "target": self.target, "seconds": self.seconds, "params": self.params,
            "counterfactuals": {c: {k: np.asarray(v).round(4).tolist() for k, v in d.items()} for c, d in self.counterfactuals.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> TwinResult:
        return cls(concepts=tuple(d["concepts"]), nodes=tuple(d["nodes"]), graph=np.asarray(d["graph"], dtype=np.float64),
                   effects={c: {k: float(v) for k, v in e.items()} for c, e in d["effects"].items()},
                   counterfactuals={c: {k: np.asarray(v, dtype=np.float64) for k, v in e.items()} for c, e in d["counterfactuals"].items()},
                   intended={c: float(v) for c, v in d["intended"].items()}, fidelity=float(d["fidelity"]),
                   reconstruction_fidelity=float(d["reconstruction_fidelity"]),
                   alignment_r2={c: float(v) for c, v in d["alignment_r2"].items()}, target=int(d["target"]),
                   seconds=float(d["seconds"]), params=dict(d.get("params", {})))


def _images_of(data) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        x = data
    elif isinstance(data, np.ndarray):
        x = torch.from_numpy(data)
    else:
        try:
            n = len(data)
        except TypeError:
            raise TypeError(f"fit_twin.data must be an image tensor (N, C, H, W) or a Dataset of (image, label), "
                            f"got {type(data).__name__}") from None
        x = torch.stack([split_item(data[i], "fit_twin.data", "the twin")[0] for i in range(n)])
    x = x.float()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"fit_twin.data must hold images shaped (C, H, W), got a batch of shape {tuple(x.shape)}")
    return x


def _target_logit(probs: torch.Tensor, target: int) -> np.ndarray:
    p = probs[:, target].double().clamp(1e-6, 1 - 1e-6)
    return (p.log() - (1 - p).log()).numpy()


def _topological(graph: np.ndarray) -> list[int]:
    g = graph != 0
    order, left = [], set(range(len(g)))
    while left:
        roots = [j for j in sorted(left) if not any(g[i, j] for i in left)]
        if not roots:
            raise RuntimeError("the fitted graph has a cycle")  # NOTEARS ends acyclic; a guard against a bad threshold
        order += roots
        left -= set(roots)
    return order


def _slope(values: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y (S, V) over values (V,), pooled over the S rows."""
    v = np.broadcast_to(values, y.shape).ravel()
    return float(np.polyfit(v, y.ravel(), 1)[0])


def fit_twin(
    model: torch.nn.Module,
    data,
    *,
    concepts: Sequence[str] = ("thickness", "slant"),
    context: ContextFn = morpho_measures,
    target: int | None = None,
    latent_dim: int = 6,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 2e-3,
    losses: SurrogateLosses | None = None,
    holdout: float = 0.25,
    lambda1: float = 0.01,
    w_threshold: float = 0.1,
    steps: int = 5,
    strip_images: int = 4,
    effect_images: int = 128,
    seed: int = 0,
    forward_fn: ForwardFn | None = None,
) -> TwinResult:
    """Explain ``model`` on ``data`` (an image tensor, or a Dataset of (image, label)) causally.

    ``context(images)`` -> {name: (N,) values} on the images as (N, H, W) (the first channel for
    colour images; Morpho-MNIST's measures by default); ``concepts`` names the features aligned to
    the first latents. ``target``: the class whose logit is explained (default 1 for a two-class
    model; required beyond). The model's weights, modes, gradients and the RNGs are left as they
    were. ``losses``: the surrogate's loss weights (``SurrogateLosses()`` by default). Cost: one pass of the classifier and of ``context`` over ``data``, ``epochs`` of a small
    VAE, NOTEARS on ``latent_dim + 1`` nodes, and ``len(concepts) x steps`` decoded batches
    re-measured by ``context``."""
    t0 = time.perf_counter()
    losses = losses or SurrogateLosses()
    concepts = tuple(concepts)
    if not concepts or not all(isinstance(c, str) for c in concepts) or len(set(concepts)) != len(concepts):
        raise ValueError(f"fit_twin.concepts must be distinct feature names, got {concepts!r}")
    check_int("fit_twin", "latent_dim", latent_dim, low=len(concepts))
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("steps", steps), ("strip_images", strip_images),
                    ("effect_images", effect_images)):
        check_int("fit_twin", name, v, low=2 if name == "steps" else 1)
    check_fraction("fit_twin", "holdout", holdout)
    check_number("fit_twin", "lr", lr, strict=True)
    x = _images_of(data)
    n = len(x)
    if n < 40:
        raise ValueError(f"fit_twin.data must hold at least 40 images (the surrogate and the graph are fitted on them), got {n}")
    device = model_device(model)
    with preserved_rng(), preserved_training_state(model), evaluation_mode(model), torch.no_grad():
        probs = batched(lambda b: F.softmax(forward(model, b.to(device), forward_fn).float(), dim=1).cpu(), x)
    num_classes = probs.shape[1]
    if target is None:
        if num_classes != 2:
            raise ValueError(f"fit_twin.target must name the class to explain for a {num_classes}-class model (None works for two)")
        target = 1
    check_int("fit_twin", "target", target, low=0, high=num_classes - 1)
    measured = context(as_images(x[:, 0].numpy()))
    missing = [c for c in concepts if c not in measured]
    if missing:
        raise ValueError(f"fit_twin.concepts {missing} are not features of the context, which gives {sorted(measured)}")
    c_raw = np.column_stack([np.asarray(measured[c], dtype=np.float64) for c in concepts])
    keep = np.isfinite(c_raw).all(axis=1)
    if keep.sum() < 40:
        raise ValueError(f"fit_twin: only {int(keep.sum())} images have every concept measured (empty images give NaN)")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(np.flatnonzero(keep))
    n_test = max(20, int(round(holdout * len(idx))))
    test, train = idx[:n_test], idx[n_test:]
    mean, std = c_raw[train].mean(0), c_raw[train].std(0) + 1e-9
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo if hi > lo else 1.0
    x01 = (x - lo) / span

    def to_model_space(img01):
        return img01 * span + lo

    with preserved_rng():
        vae, history = train_surrogate(x01[train], probs[train], torch.from_numpy((c_raw[train] - mean) / std).float(),
                                       latent_dim=latent_dim, epochs=epochs, batch_size=batch_size, lr=lr, losses=losses,
                                       seed=seed)
    k = len(concepts)
    mu = batched(lambda b: vae.encode(b)[0], x01[test]).double().numpy()
    head = batched(lambda b: vae.head(b), torch.from_numpy(mu).float())
    fidelity = float((head.argmax(1) == probs[test].argmax(1)).double().mean())

    def classify(img01: torch.Tensor) -> torch.Tensor:
        with preserved_rng(), preserved_training_state(model), evaluation_mode(model), torch.no_grad():
            return batched(lambda b: F.softmax(forward(model, to_model_space(b).to(device), forward_fn).float(), dim=1).cpu(), img01)

    recon = batched(vae.decode, torch.from_numpy(mu).float())
    reconstruction_fidelity = float((classify(recon).argmax(1) == probs[test].argmax(1)).double().mean())
    alignment = {c: r2_score(mu[:, j], (c_raw[test, j] - mean[j]) / std[j]) for j, c in enumerate(concepts)}

    # the nodes: concepts in their units, residual latents, the logit (a sink)
    nodes = (*concepts, *(f"z{j}" for j in range(k, latent_dim)), LOGIT)
    values = np.column_stack([c_raw[test], mu[:, k:], _target_logit(probs[test], target)])
    d = len(nodes)
    forbidden = np.zeros((d, d), bool)
    forbidden[-1, :] = True
    structure = notears_linear(values, lambda1=lambda1, w_threshold=0.0, forbidden=forbidden)
    scale = values.std(axis=0) + 1e-12
    structure[np.abs(structure * scale[:, None] / scale[None, :]) < w_threshold] = 0.0  # cut in standard units
    W, _ = fit_linear_sem(values, structure)
    order = _topological(W)
    total_matrix = np.linalg.inv(np.eye(d) - W)  # total effects: sum over paths
    effects = {}
    for j, c in enumerate(concepts):
        effects[c] = {"direct": float(W[j, -1]), "total": float(total_matrix[j, -1]),
                      "mediated": float(total_matrix[j, -1] - W[j, -1])}

    # interventions on held-out images
    rows = np.arange(min(effect_images, len(test)))
    counterfactuals, intended = {}, {}
    for j, c in enumerate(concepts):
        grid = np.quantile(values[:, j], np.linspace(0.05, 0.95, steps))
        logit_total, logit_direct, imgs, remeasured = [], [], [], []
        for v in grid:
            new = values[rows].copy()
            new[:, j] = v
            for child in order:  # propagate to the descendants, keeping each image's residual
                if child != j and (W[:, child] != 0).any():
                    new[:, child] = values[rows, child] + (new - values[rows]) @ W[:, child]
            direct = values[rows].copy()
            direct[:, j] = v
            for kind, nv in (("total", new), ("direct", direct)):
                # each image's own latents, shifted by what the intervention changed; z_j set to v
                z = mu[rows] + np.column_stack([(nv[:, :k] - values[rows, :k]) / std, nv[:, k:-1] - values[rows, k:-1]])
                z[:, j] = (v - mean[j]) / std[j]
                img = batched(vae.decode, torch.from_numpy(z).float())
                lg = _target_logit(classify(img), target)
                if kind == "total":
                    logit_total.append(lg)
                    imgs.append(img[:, 0].numpy())
                    remeasured.append(np.asarray(context(as_images(to_model_space(img[:, 0]).numpy()))[c], dtype=np.float64))
                else:
                    logit_direct.append(lg)
        lt, ld = np.stack(logit_total, 1), np.stack(logit_direct, 1)
        meas = np.stack(remeasured, 1)
        steps_moved = np.diff(meas, axis=1) * np.sign(np.diff(grid))[None]
        intended[c] = float(np.mean(steps_moved[np.isfinite(steps_moved)] > 0)) if np.isfinite(steps_moved).any() else float("nan")
        effects[c]["decoded_total"] = _slope(grid, lt)
        effects[c]["decoded_direct"] = _slope(grid, ld)
        effects[c]["decoded_mediated"] = effects[c]["decoded_total"] - effects[c]["decoded_direct"]
        s = min(strip_images, len(rows))
        counterfactuals[c] = {"values": grid, "images": np.stack(imgs, 1)[:s], "measured": meas[:s], "logit": lt[:s],
                              "mean_measured": np.nanmean(meas, axis=0), "mean_logit": lt.mean(axis=0)}
    params = dict(latent_dim=latent_dim, epochs=epochs, holdout=holdout, lambda1=lambda1, w_threshold=w_threshold, steps=steps,
                  seed=seed, train_images=int(len(train)), test_images=int(len(test)), final_loss=float(history[-1]) if history else None,
                  losses=dict(beta=losses.beta, distill=losses.distill, align=losses.align, decorrelate=losses.decorrelate))
    return TwinResult(concepts=concepts, nodes=nodes, graph=W, effects=effects, counterfactuals=counterfactuals, intended=intended,
                      fidelity=fidelity, reconstruction_fidelity=reconstruction_fidelity, alignment_r2=alignment, target=int(target),
                      seconds=time.perf_counter() - t0, params=params)
