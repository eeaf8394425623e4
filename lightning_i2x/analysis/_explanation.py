"""The structured explanation (Step 6 of the method) and the function that builds it.

``explain`` takes plain arrays (intensities, confidences, labels, salient presence) and returns an
``Explanation``: the ridge coefficients per interval, the learning-pattern groups, and the
questions a user asks of them (shared and specialised prototypes of a class, which prototypes moved
confidence between which classes, which prototypes are uncertain, in what order pairs were learned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np

from . import _steps as analysis

__all__ = ["Explanation", "UncertainPrototype", "LearningStep", "explain"]


class UncertainPrototype(NamedTuple):
    """A prototype the model keeps reassigning between two classes. ``flips``: the reversals of
    its edge between them (``uncertain_rule="edges"``) or the sign flips of its coefficient
    difference (``"difference"``); ``score``: what ranks it (``explain``)."""

    prototype: int
    classes: tuple[int, int]
    flips: int
    score: float


class LearningStep(NamedTuple):
    """A class pair and the interval after which its separating prototypes stopped flipping, by the
    explanation's ``uncertain_rule`` (None: still flipping in the last interval, or never separated)."""

    classes: tuple[int, int]
    interval: int | None


@dataclass(frozen=True)
class Explanation:
    """Everything Steps 4-6 derive from one run; cheap queries on precomputed arrays. It carries
    what it was built from (``intensities``, ``presence``, ``thresholds``, ``params`` with the
    saliency threshold), so views and fine-tuning read them here instead of recomputing them."""

    beta: np.ndarray  # (T-1, K, M) global ridge coefficients per interval
    thresholds: np.ndarray  # (T-1,) tau per interval
    groups: np.ndarray  # (T-1, N) HDBSCAN label of each sample per interval, -1 = noise
    presence: np.ndarray  # (N, K) bool, prototype in the salient region at the reference checkpoint
    labels: np.ndarray  # (N,) true class of each probe sample
    class_names: list
    params: dict = field(default_factory=dict)
    intensities: np.ndarray | None = field(default=None, repr=False)  # (T, N, K), NaN where absent
    _uncertain: list = field(default_factory=list, repr=False)
    _order: list = field(default_factory=list, repr=False)
    suspects: tuple[int, ...] | None = None  # likely shortcuts (lightning_i2x.suspects); None: no reliance measured
    signs: np.ndarray | None = field(default=None, repr=False)  # (T-1, K, M) int8 significant sign; None: from thresholds

    # -- shape -------------------------------------------------------------------------------
    @property
    def num_intervals(self) -> int:
        return int(self.beta.shape[0])

    @property
    def num_prototypes(self) -> int:
        return int(self.presence.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, c: int | str) -> int:
        """A class given by index or by name, as an index."""
        if isinstance(c, str):
            if c not in self.class_names:
                raise KeyError(f"unknown class {c!r}; the run's classes are {self.class_names}")
            return self.class_names.index(c)
        c = int(c)
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class index {c} outside [0, {self.num_classes})")
        return c

    # -- intra-class ---------------------------------------------------------------------------
    def presence_fraction(self, c: int | str) -> np.ndarray:
        """(K,) fraction of class-c probe samples whose salient region holds each prototype."""
        members = self.labels == self.class_index(c)
        if not members.any():
            return np.zeros(self.num_prototypes)
        return self.presence[members].mean(axis=0)

    def shared_prototypes(self, c: int | str) -> list[int]:
        """Prototypes present in the salient region of >= shared_frac of class-c samples."""
        frac = self.presence_fraction(c)
        return [int(k) for k in np.flatnonzero(frac >= self.params["shared_frac"])]

    def specialised_prototypes(self, c: int | str) -> list[int]:
        """Prototypes below shared_frac over class c, but present in >= specialised_frac of the
        class-c members of one learning-pattern group (of any interval)."""
        ci = self.class_index(c)
        shared = set(self.shared_prototypes(ci))
        members = self.labels == ci
        min_size = self.params["min_group_members"]
        found: set[int] = set()
        for labels_t in self.groups:
            for g in np.unique(labels_t[members]):
                if g < 0:
                    continue
                in_group = members & (labels_t == g)
                if in_group.sum() < min_size:
                    continue
                frac = self.presence[in_group].mean(axis=0)
                found.update(int(k) for k in np.flatnonzero(frac >= self.params["specialised_frac"]))
        return sorted(found - shared)

    # -- inter-class ---------------------------------------------------------------------------
    @property
    def significant(self) -> np.ndarray:
        """(T-1, K, M) int8: +1 where a coefficient is significantly positive, -1 negative, 0 not
        significant, by the explanation's ``params["significance"]`` (``"tau"``: ``|beta| > tau``)."""
        if self.signs is not None:
            return self.signs
        return analysis.coefficient_signs(self.beta, self.thresholds)

    def edges(self, c: int | str) -> list[tuple[int, int, int, list[int]]]:
        """The annotated checkpoint graph of class c: (t, from_class, to_class=c, [prototypes])
        for every interval t and class b whose confidence the prototypes moved to c:
        ``beta[t][k, c]`` significantly positive and ``beta[t][k, b]`` significantly negative
        (``significant``; with ``significance="tau"``: ``> tau`` and ``< -tau``)."""
        ci = self.class_index(c)
        sig = self.significant
        out = []
        for t in range(self.num_intervals):
            raise_c = sig[t, :, ci] > 0
            for b in range(self.num_classes):
                if b == ci:
                    continue
                ks = np.flatnonzero(raise_c & (sig[t, :, b] < 0))
                if ks.size:
                    out.append((t, b, ci, [int(k) for k in ks]))
        return out

    @property
    def uncertain(self) -> list[UncertainPrototype]:
        """Prototypes whose edge between two classes reversed (``uncertain_rule="edges"``), or whose
        pair difference flipped sign (``"difference"``), >= min_flips times; best first."""
        return list(self._uncertain)

    def uncertain_pairs(self) -> list[tuple[int, int]]:
        """Class pairs with at least one uncertain prototype, best first."""
        return list(dict.fromkeys(u.classes for u in self._uncertain))

    @cached_property
    def _by_class(self) -> dict[int, tuple[list[UncertainPrototype], list[LearningStep]]]:
        """Each class's uncertain prototypes and learning steps, in their order: with M classes there
        are M(M-1)/2 steps, so per-class views must not scan them all once per class."""
        index: dict[int, tuple[list, list]] = {c: ([], []) for c in range(self.num_classes)}
        for u in self._uncertain:
            for c in u.classes:
                index[c][0].append(u)
        for s in self._order:
            for c in s.classes:
                index[c][1].append(s)
        return index

    def learning_order(self) -> list[LearningStep]:
        """Class pairs with the interval in which each was resolved, earliest first, unresolved last."""
        return list(self._order)

    # -- output --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-serialisable view of the explanation."""
        classes = range(self.num_classes)
        out = {
            "class_names": list(self.class_names),
            "num_intervals": self.num_intervals,
            "num_prototypes": self.num_prototypes,
            "params": {k: v for k, v in self.params.items()},
            "thresholds": self.thresholds.tolist(),
            "beta": self.beta.tolist(),
            "shared": {self.class_names[c]: self.shared_prototypes(c) for c in classes},
            "specialised": {self.class_names[c]: self.specialised_prototypes(c) for c in classes},
            "edges": {self.class_names[c]: [list(e[:3]) + [e[3]] for e in self.edges(c)] for c in classes},
            "uncertain": [
                {"prototype": u.prototype, "classes": list(u.classes), "flips": u.flips, "score": u.score}
                for u in self._uncertain
            ],
            "learning_order": [{"classes": list(s.classes), "interval": s.interval} for s in self._order],
        }
        if self.suspects is not None:
            out["suspects"] = list(self.suspects)
        return out

    def to_markdown(self, classes: Sequence[int | str] | None = None, max_uncertain: int = 10) -> str:
        """A human summary: per class shared/specialised prototypes and edges, then uncertain
        prototypes and the learning order."""
        name = self.class_names
        lines = ["## Uncertain prototypes", ""]
        word = _flip_word(self.params)
        if self._uncertain:
            lines += [f"| prototype | classes | {word} | score |", "|---|---|---|---|"]
            for u in self._uncertain[:max_uncertain]:
                lines.append(f"| P-{u.prototype} | {name[u.classes[0]]} <-> {name[u.classes[1]]} | {u.flips} | {u.score:.3g} |")
        else:
            lines.append(f"none (needs >= {self.params['min_flips']} {_flip_word(self.params, long=True)}; "
                         f"{self.num_intervals} intervals recorded)")
        lines += ["", f"Rule: {_rule_text(self.params)}."]
        if self.suspects is not None:
            report = getattr(self.suspects, "report", None)  # analysis.Suspects: the rule's reasons
            lines += ["", "## Suspected shortcuts", "",
                      report.summary() if report is not None else
                      (_fmt_protos(list(self.suspects)) + ": flagged by the suspect rule" if self.suspects else "none")]
        lines += ["", "## Classes", ""]
        for c in range(self.num_classes) if classes is None else [self.class_index(c) for c in classes]:
            edges = self.edges(c)
            lines.append(f"### {name[c]}")
            lines.append(f"- shared: {_fmt_protos(self.shared_prototypes(c))}")
            lines.append(f"- specialised: {_fmt_protos(self.specialised_prototypes(c))}")
            if edges:
                shown = "; ".join(f"T{t}: {name[b]} -> {name[a]} by {_fmt_protos(ks)}" for t, b, a, ks in edges[-5:])
                lines.append(f"- latest edges: {shown}")
            lines.append("")
        resolved = [s for s in self._order if s.interval is not None]
        lines += ["## Learning order", ""]
        if resolved:
            lines.append(", ".join(f"{name[s.classes[0]]}/{name[s.classes[1]]} @T{s.interval}" for s in resolved[:15]))
        else:
            lines.append("no pair resolved yet")
        return "\n".join(lines) + "\n"


    def class_markdown(self, c: int | str, max_uncertain: int = 10) -> str:
        """Everything the explanation says about one class, as markdown: its shared and
        specialised prototypes, every edge of its checkpoint graph, the (top ``max_uncertain``)
        uncertain prototypes of its pairs and when each of its pairs was resolved."""
        ci, name = self.class_index(c), self.class_names
        lines = [f"### {name[ci]}", "", f"- shared: {_fmt_protos(self.shared_prototypes(ci))}",
                 f"- specialised: {_fmt_protos(self.specialised_prototypes(ci))}"]
        by_t: dict[int, list[str]] = {}
        for t, b, _, ks in self.edges(ci):
            by_t.setdefault(t, []).append(f"{name[b]} ({_fmt_protos(ks)})")
        lines.append("- edges: " + ("; ".join(f"{', '.join(v)} -> T{t}" for t, v in by_t.items()) if by_t else "none"))
        unc, steps = self._by_class[ci]
        more = f" and {len(unc) - max_uncertain} more" if len(unc) > max_uncertain else ""
        lines.append("- uncertain: " + (", ".join(
            f"P-{u.prototype} ({name[u.classes[0]]} <-> {name[u.classes[1]]}, {u.flips} {_flip_word(self.params)})"
            for u in unc[:max_uncertain]) + more
            if unc else "none"))
        lines.append("- learning order: " + (", ".join(
            f"{name[s.classes[0]]}/{name[s.classes[1]]} " + (f"@T{s.interval}" if s.interval is not None else "unresolved")
            for s in steps) if steps else "none"))
        return "\n".join(lines) + "\n"

    # -- plots (matplotlib figures; see lightning_i2x.viz) ---------------------------------------
    def plot_evolution(self, c: int | str, run=None, **kw):
        """Fig. 3: prototypes x intervals, did each raise or lower class c, and against whom."""
        from .. import viz as plots

        return plots.evolution_grid(self, c, run=run, **kw)

    def plot_graph(self, c: int | str, **kw):
        """Fig. 4: the annotated checkpoint graph of class c."""
        from .. import viz as plots

        return plots.checkpoint_graph(self, c, **kw)

    def plot_pair(self, a: int | str, b: int | str, run=None, **kw):
        """Fig. 5: every prototype separating a from b over the intervals, uncertain ones marked."""
        from .. import viz as plots

        return plots.confused_pair(self, a, b, run=run, **kw)

    def plot_beta(self, interval: int = -1, **kw):
        """Heat map of one interval's ridge coefficients (K x M)."""
        from .. import viz as plots

        return plots.ridge_heatmap(self, interval, **kw)


def _fmt_protos(ks: Sequence[int]) -> str:
    return ", ".join(f"P-{k}" for k in ks) if ks else "none"


def _flip_word(params: dict, long: bool = False) -> str:
    if params.get("uncertain_rule", "difference") == "edges":
        return "edge reversals" if long else "reversals"
    return "sign flips" if long else "flips"


def _rule_text(params: dict) -> str:
    rule = ("the edge between the two classes reverses" if params.get("uncertain_rule", "difference") == "edges"
            else "the sign of the coefficient difference flips")
    sig = params.get("significance", "tau")
    if sig == "tau":
        how = "a coefficient counts when |beta| > tau"
    else:
        what = f"{params.get('bootstrap_samples')}-resample bootstrap" if sig == "bootstrap" else "standard-error"
        how = f"a coefficient counts when its {100 * (1 - params.get('significance_level', 0.05)):.4g} % {what} interval excludes 0"
    return f"uncertain when {rule} >= {params.get('min_flips')} times; {how}"


_PAIR_CHUNK_VALUES = 2**21


def explain(
    intensities: np.ndarray,
    confidences: np.ndarray,
    labels: np.ndarray,
    presence: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    ridge_lambda: float = 1.0,
    tau: float | str = "auto",
    tau_scale: float = 1.0,
    min_flips: int = 2,
    shared_frac: float = 0.8,
    specialised_frac: float = 0.5,
    min_cluster_size: int | None = None,
    max_cluster_samples: int | None = analysis.MAX_CLUSTER_SAMPLES,
    groups: np.ndarray | None = None,
    saliency_threshold: float = analysis.SALIENCY_THRESHOLD,
    uncertain_rule: str = "difference",
    significance: str = "tau",
    significance_level: float = 0.05,
    bootstrap_samples: int = 200,
    bootstrap_seed: int = 0,
) -> Explanation:
    """Steps 4-6 on recorded arrays.

    intensities (T, N, K) with NaN where absent; confidences (T, N, M); labels (N,);
    presence (N, K) salient presence at the reference checkpoint. ``groups`` (T-1, N) may be
    passed to reuse HDBSCAN labels computed earlier (they depend on confidences only);
    ``max_cluster_samples`` bounds HDBSCAN's quadratic cost (see ``analysis.learning_groups``);
    ``saliency_threshold`` is the one ``presence`` was computed with, kept in ``params`` for views.

    Uncertain prototypes and the learning order follow ``uncertain_rule``: ``"edges"``
    (``analysis.pair_reversals``: k's edge between a and b reverses >= ``min_flips`` times; score =
    reversals x the mean over the edge intervals of ``min(|beta[t][k, a]|, |beta[t][k, b]|)``) or
    ``"difference"`` (``analysis.pair_flips``: the sign of ``beta[t][k, a] - beta[t][k, b]`` flips
    >= ``min_flips`` times; score = flips x its mean significant magnitude). A coefficient (or,
    under ``"difference"``, a difference) is significant by ``significance``: ``"tau"``
    (``|.| > thresholds[t]``), ``"bootstrap"`` or ``"stderr"`` (its ``1 - significance_level``
    interval excludes 0, ``analysis.ridge_intervals``; the bootstrap resamples the probe images
    with ``bootstrap_counts(N, bootstrap_samples, bootstrap_seed)``, the same for every interval).
    ``thresholds`` is tau in every case (the views draw it). This function's defaults are 0.2's
    (``"difference"``, ``"tau"``); ``ExplainOptions`` holds those of new runs.

    Raises ValueError when the shapes disagree or a parameter is out of range.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> e = explain(rng.random((3, 40, 4)), rng.random((3, 40, 2)), np.arange(40) % 2, np.ones((40, 4), bool))
        >>> e.beta.shape, e.shared_prototypes(0)
        ((2, 4, 2), [0, 1, 2, 3])
    """
    p = np.asarray(intensities, dtype=np.float64)
    y = np.asarray(confidences, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    presence = np.asarray(presence, dtype=bool)
    t_, n, k = p.shape
    m = y.shape[2]
    if y.shape[:2] != (t_, n) or labels.shape != (n,) or presence.shape != (n, k):
        raise ValueError(
            f"shapes disagree: intensities {p.shape}, confidences {y.shape}, labels {labels.shape}, presence {presence.shape}"
        )
    if t_ < 1:
        raise ValueError("explain needs at least one checkpoint")
    if not 0 < shared_frac <= 1 or not 0 < specialised_frac <= 1:
        raise ValueError("shared_frac and specialised_frac must lie in (0, 1]")
    if min_flips < 1:
        raise ValueError(f"min_flips must be >= 1, got {min_flips}")
    if uncertain_rule not in analysis.UNCERTAIN_RULES:
        raise ValueError(f"uncertain_rule must be one of {analysis.UNCERTAIN_RULES}, got {uncertain_rule!r}")
    if significance not in analysis.SIGNIFICANCE_METHODS:
        raise ValueError(f"significance must be one of {analysis.SIGNIFICANCE_METHODS}, got {significance!r}")
    names = [str(c) for c in range(m)] if class_names is None else [str(c) for c in class_names]
    if len(names) != m:
        raise ValueError(f"{len(names)} class names for {m} classes")

    dp, dy = analysis.interval_deltas(p, y)
    if groups is None:
        groups = (
            np.stack([analysis.learning_groups(dy[t], min_cluster_size, max_cluster_samples) for t in range(t_ - 1)])
            if t_ > 1
            else np.zeros((0, n), np.int64)
        )
    groups = np.asarray(groups)
    if groups.shape != (t_ - 1, n) or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(f"groups must be ({t_ - 1}, {n}) integer labels (one row per interval), got {groups.dtype} {groups.shape}")
    groups = groups.astype(np.int64)
    beta = np.stack([analysis.ridge(dp[t], dy[t], ridge_lambda) for t in range(t_ - 1)]) if t_ > 1 else np.zeros((0, k, m))
    thresholds = analysis.interval_thresholds(beta, tau, tau_scale)
    first, second = np.triu_indices(m, 1)  # every pair a < b, in the order (0, 1), (0, 2), ..., (1, 2), ...
    if significance == "tau" or t_ < 2:
        signs = analysis.coefficient_signs(beta, thresholds)
        differences = None
    else:
        signs, differences = _interval_signs(dp, dy, ridge_lambda, significance, significance_level, bootstrap_samples, bootstrap_seed)

    uncertain: list[UncertainPrototype] = []
    order: list[LearningStep] = []
    chunk = max(1, _PAIR_CHUNK_VALUES // max(1, (t_ - 1) * k))  # pairs at a time: (T-1, K, chunk) temporaries stay small
    for start in range(0, first.size, chunk):
        a, b = first[start : start + chunk], second[start : start + chunk]
        if t_ < 2:
            flips, magnitude, last_flip = np.zeros((k, a.size), int), np.zeros((k, a.size)), np.full((k, a.size), -1)
        elif uncertain_rule == "edges":
            flips, magnitude, last_flip = analysis.pair_reversals(beta, signs, a, b)
        else:
            diff = None if differences is None else differences(a, b)
            flips, magnitude, last_flip = analysis.pair_flips(beta, thresholds, a, b, diff)
        for kk, j in zip(*np.nonzero(flips >= min_flips)):
            uncertain.append(UncertainPrototype(int(kk), (int(a[j]), int(b[j])), int(flips[kk, j]), float(flips[kk, j] * magnitude[kk, j])))
        last = last_flip.max(axis=0)
        unresolved = ~(magnitude > 0).any(axis=0) | ((last >= 0) & (last == t_ - 2))  # never separated, or still flipping
        order.extend(LearningStep((int(pa), int(pb)), None if u else max(int(li), 0)) for pa, pb, u, li in zip(a, b, unresolved, last))
    uncertain.sort(key=lambda u: (-u.score, u.prototype, u.classes))
    order.sort(key=lambda s: (s.interval is None, s.interval if s.interval is not None else 0, s.classes))

    params = {
        "ridge_lambda": float(ridge_lambda),
        "tau": tau if isinstance(tau, str) else float(tau),
        "tau_scale": float(tau_scale),
        "min_flips": int(min_flips),
        "shared_frac": float(shared_frac),
        "specialised_frac": float(specialised_frac),
        "min_cluster_size": analysis.default_min_cluster_size(n) if min_cluster_size is None else int(min_cluster_size),
        "max_cluster_samples": None if max_cluster_samples is None else int(max_cluster_samples),
        "min_group_members": 3,
        "saliency_threshold": float(saliency_threshold),
        "uncertain_rule": uncertain_rule,
        "significance": significance,
    }
    if significance != "tau":
        params["significance_level"] = float(significance_level)
    if significance == "bootstrap":
        params["bootstrap_samples"], params["bootstrap_seed"] = int(bootstrap_samples), int(bootstrap_seed)
    return Explanation(beta, thresholds, groups, presence, labels, names, params, np.asarray(intensities), uncertain, order,
                       signs=signs)


def _interval_signs(dp, dy, lam, method, level, samples, seed):
    """The significant sign of every coefficient (T-1, K, M) by its interval, and a function of index
    arrays (a, b) giving the significant sign (T-1, K, P) of each pair's difference ``dy_a - dy_b``,
    computed for those pairs only; the bootstrap draws its resamples once, for both."""
    n = dp.shape[1]
    counts = analysis.bootstrap_counts(n, samples, seed) if method == "bootstrap" and n > 0 else None

    def signs_of(t: int, y: np.ndarray) -> np.ndarray:
        return analysis.interval_signs(*analysis.ridge_intervals(dp[t], y, lam, method, level, samples, seed, counts=counts))

    def differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.stack([signs_of(t, dy[t][:, a] - dy[t][:, b]) for t in range(dp.shape[0])])

    return np.stack([signs_of(t, dy[t]) for t in range(dp.shape[0])]), differences
