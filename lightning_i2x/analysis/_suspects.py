"""Which prototypes look like shortcuts, from what a run holds (no ground truth, no human masks),
and, where none does, why not (``suspect_report``).

The rule's inputs: the reliance (``Reliance``, measured with a content-removing intervention, the
resampling fill or the latent swap: a blur leaves a uniform swatch's shade in place and cannot see
it), where each prototype sits (``prototype_geometry``), and what only a training-time explainer
has: the GradCAM intensities of every checkpoint, (T, N, K), from which the last checkpoint's
saliency and the checkpoint at which each prototype's intensity rose (``intensity_rise``).

Calibration: the default thresholds are declared on one split and judged on another. For now the
calibration split is the planted unit cases (``tests/test_suspects.py``: a relied-on one-cell
corner swatch against a relied-on object part that moves; ``tests/test_interventions.py``: a model
that reads only a uniform swatch, a clean model that reads a moving object, a global brightness
cast); the judged split is the recorded benchmarks (``benchmarks/``), whose goals the thresholds
were not tuned on. The position prior (fixed few places at the edge), which fits a corner swatch
only, is an optional criterion (``position=True``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from ._reliance import Reliance

__all__ = [
    "prototype_geometry", "intensity_rise", "suspect_prototypes", "suspect_report", "SuspectReport", "SuspectCandidate",
    "Criterion", "Suspects", "SUSPECT_RULE_OPTIONS", "SUSPECT_RULE_DEFAULTS",
]

SUSPECT_RULE_DEFAULTS: dict[str, object] = {
    "min_images": 5,
    "min_reliance": 0.02,
    "min_reliance_per_location": 0.1,
    "min_localisation": 0.5,
    "min_intensity_quantile": 0.5,
    "max_rise": None,
    "position": False,
    "min_concentration": 0.75,
    "min_border": 0.6,
    "top_positions": 4,
}
"""The rule's thresholds and their defaults (calibration split: the planted unit cases)."""

SUSPECT_RULE_OPTIONS = frozenset(SUSPECT_RULE_DEFAULTS)
"""The thresholds ``suspect_prototypes`` takes, by name."""


def prototype_geometry(assignment: np.ndarray, num_prototypes: int, top_positions: int = 4, border: int = 1) -> dict[str, np.ndarray]:
    """Where each prototype sits on the (h, w) map, over the (N, h, w) ``assignment``:

    concentration: share of its locations at its ``top_positions`` most used map positions
        (1 = always at the same few places, as a swatch in four corners; ``top_positions / (h w)``
        for a prototype spread evenly);
    border: share of its locations within ``border`` cells of the map's edge;
    locations: total number of its locations;
    per_image: mean number of its locations in an image that holds it (NaN where none does).
    """
    a = np.asarray(assignment)
    if a.ndim != 3:
        raise ValueError(f"assignment must be (N, h, w), got shape {a.shape}")
    n, h, w = a.shape
    pos = np.zeros((num_prototypes, h * w), dtype=np.int64)
    np.add.at(pos, (a.reshape(n, -1).ravel(), np.tile(np.arange(h * w), n)), 1)
    total = pos.sum(1)
    top = np.sort(pos, axis=1)[:, ::-1][:, :top_positions].sum(1)
    ring = np.zeros((h, w), dtype=bool)
    ring[:border], ring[-border:], ring[:, :border], ring[:, -border:] = True, True, True, True
    holders = np.zeros(num_prototypes, dtype=np.int64)
    for k in np.unique(a):
        holders[int(k)] = int((a == k).any(axis=(1, 2)).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        conc = np.where(total > 0, top / np.maximum(total, 1), np.nan)
        bord = np.where(total > 0, pos[:, ring.ravel()].sum(1) / np.maximum(total, 1), np.nan)
        per_image = np.where(holders > 0, total / np.maximum(holders, 1), np.nan)
    return {"concentration": conc, "border": bord, "locations": total, "per_image": per_image}


def intensity_rise(intensities: np.ndarray) -> np.ndarray:
    """(K,) when each prototype's mean GradCAM intensity rose, from the (T, N, K) intensities of
    every checkpoint: the first checkpoint at which its mean over the probe images reached half
    the way from its first value to its highest, as a fraction of the checkpoints (0 = at the
    first, 1 = at the last; 0 for a curve that never rose; NaN where it is never present). What
    only a training-time explainer has: a shortcut is typically learned early."""
    it = np.asarray(intensities, dtype=np.float64)
    if it.ndim != 3:
        raise ValueError(f"intensities must be (T, N, K), got shape {it.shape}")
    t = it.shape[0]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        curve = np.nanmean(it, axis=1)  # (T, K)
        first = curve[0]
        top = np.nanmax(curve, axis=0)
    out = np.full(it.shape[2], np.nan)
    for k in range(it.shape[2]):
        c = curve[:, k]
        if not np.isfinite(c).any():
            continue
        lo = first[k] if np.isfinite(first[k]) else np.nanmin(c)
        if not top[k] > lo:
            out[k] = 0.0
            continue
        hit = np.flatnonzero(np.nan_to_num(c, nan=-np.inf) >= lo + 0.5 * (top[k] - lo))
        out[k] = float(hit[0]) / max(t - 1, 1)
    return out


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One criterion of the rule for one prototype.

    name: what it checks (``"reliance"``, ``"per location"``, ...).
    value: the prototype's value (NaN where it has none).
    threshold: the rule's threshold.
    at_least: True when the value must be >= the threshold, False when <=.
    """

    name: str
    value: float
    threshold: float
    at_least: bool = True

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value >= self.threshold if self.at_least else self.value <= self.threshold

    def describe(self) -> str:
        if not math.isfinite(self.value):
            return f"{self.name} undefined (threshold {self.threshold:.3g})"
        op = (">=" if self.at_least else "<=") if self.passed else ("<" if self.at_least else ">")
        return f"{self.name} {self.value:.3g} {op} {self.threshold:.3g}"


@dataclasses.dataclass(frozen=True)
class SuspectCandidate:
    """A prototype and the rule's criteria for it."""

    prototype: int
    criteria: tuple[Criterion, ...]

    @property
    def failed(self) -> tuple[Criterion, ...]:
        return tuple(c for c in self.criteria if not c.passed)

    def describe(self) -> str:
        bad = self.failed
        shown = bad if bad else self.criteria
        return f"P-{self.prototype} " + ("failed " if bad else "") + ", ".join(c.describe() for c in shown)


@dataclasses.dataclass(frozen=True)
class SuspectReport:
    """What the suspect rule found.

    suspects: the suspect ids, most reliant first.
    verdict: ``"suspects"``, ``"none"`` (no prototype qualifies) or ``"not localised"`` (abstains:
        hiding random locations costs the model as much as hiding any prototype, a cause spread
        over the whole image such as a brightness or colour cast, not a prototype).
    candidates: the suspects' criteria, or, without suspects, the strongest candidates (most
        reliant first) with the criteria they failed.
    note: a caveat on the inputs (a reliance measured with the blur), or "".
    """

    suspects: tuple[int, ...]
    verdict: str
    candidates: tuple[SuspectCandidate, ...] = ()
    note: str = ""

    def summary(self) -> str:
        """One line: the suspects, or why there are none."""
        if self.suspects:
            names = [c.name for c in self.candidates[0].criteria] if self.candidates else []
            text = ", ".join(f"P-{k}" for k in self.suspects) + ": relied on beyond random locations of equal area"
            text += f" (passed {', '.join(names)})" if names else ""
        elif self.verdict == "not localised":
            text = ("not localised: hiding random locations of equal area costs the model as much as hiding any "
                    "prototype (a cause spread over the image, e.g. a brightness or colour cast); no prototype flagged")
        else:
            text = "none"
            if self.candidates:
                text += "; strongest candidates: " + "; ".join(c.describe() for c in self.candidates)
        return text + (f" ({self.note})" if self.note else "")

    def to_dict(self) -> dict:
        return {"suspects": list(self.suspects), "verdict": self.verdict, "note": self.note,
                "candidates": [{"prototype": c.prototype, "failed": [c_.name for c_ in c.failed],
                                "criteria": [dataclasses.asdict(x) for x in c.criteria]} for c in self.candidates]}


class Suspects(tuple):
    """The suspect ids (a tuple) carrying their ``report`` (``SuspectReport``), so an
    ``Explanation``'s ``suspects`` can say why it is empty."""

    report: SuspectReport

    def __new__(cls, report: SuspectReport):
        obj = super().__new__(cls, report.suspects)
        obj.report = report
        return obj

    def __reduce__(self):
        return (Suspects, (self.report,))


def suspect_report(
    reliance: Reliance,
    assignment: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    intensities: np.ndarray | None = None,
    confidences: np.ndarray | None = None,
    num_prototypes: int | None = None,
    top_candidates: int = 3,
    **thresholds,
) -> SuspectReport:
    """The suspect rule with its reasons. k is a suspect when all of these hold (thresholds by
    name, ``SUSPECT_RULE_DEFAULTS``):

    1. images: k is in at least ``min_images`` probe images (``reliance.count``);
    2. reliance: hiding k costs the true class at least ``min_reliance`` more probability than
       hiding as many random locations (``reliance.reliance``): the model uses it;
    3. per location: that reliance per location of k in an image (``prototype_geometry``'s
       ``per_image``) is at least ``min_reliance_per_location``: a shortcut is a small region that
       carries the decision (a one-cell swatch: the whole drop on one location), where the parts of
       a real object each carry a share of it;
    4. localised: at least ``min_localisation`` of k's drop is not explained by hiding that much
       of the image anywhere (``reliance / drop``);
    5. salient (when ``intensities`` are given): k's mean GradCAM intensity at the last checkpoint
       is at least the ``min_intensity_quantile`` quantile of the prototypes';
    6. early (when ``max_rise`` is set and ``intensities`` span checkpoints): k's intensity rose
       (``intensity_rise``) by ``max_rise`` of training;
    7. position (only with ``position=True``, the former prior that fits a corner swatch): at
       least ``min_concentration`` of k's locations on its ``top_positions`` most used map
       positions and ``min_border`` of them in the map's outer ring.

    Abstains (``verdict="not localised"``) when no prototype qualifies and, for every prototype
    whose area costs the model something (hiding as many random locations drops the true class by
    at least ``min_reliance``), hiding the prototype costs about the same (within
    ``1 - min_localisation`` of it): what the model reads is spread over the image (a brightness or
    colour cast), not held by a prototype.

    Args:
        reliance: the measured reliance (content-removing: ``fill="resample"`` or the latent
            intervention; a blur reliance is used but noted).
        assignment: (N, h, w) prototype id of every probe location.
        labels: (N,) true classes (checked, not used by the rule).
        intensities: (T, N, K) GradCAM intensities of the checkpoints (NaN where absent), or None.
        confidences: accepted for rules that use the confidence history; not used.
        num_prototypes: K (default the reliance's).
        top_candidates: how many candidates a report without suspects names.
        **thresholds: overrides of ``SUSPECT_RULE_DEFAULTS``.

    Raises ValueError on mismatched shapes or an unknown threshold.
    """
    unknown = sorted(set(thresholds) - SUSPECT_RULE_OPTIONS)
    if unknown:
        raise ValueError(f"unknown suspect-rule threshold(s) {unknown}; the rule takes {sorted(SUSPECT_RULE_OPTIONS)}")
    o = {**SUSPECT_RULE_DEFAULTS, **thresholds}
    k_count = reliance.num_prototypes if num_prototypes is None else int(num_prototypes)
    a = np.asarray(assignment)
    if a.ndim != 3:
        raise ValueError(f"assignment must be (N, h, w), got shape {a.shape}")
    if reliance.num_prototypes != k_count:
        raise ValueError(f"reliance has {reliance.num_prototypes} prototypes, num_prototypes={k_count}")
    if a.size and (a.min() < 0 or a.max() >= k_count):
        raise ValueError(f"assignment ids must lie in [0, {k_count})")
    if labels is not None and np.asarray(labels).reshape(-1).shape[0] != a.shape[0]:
        raise ValueError(f"{np.asarray(labels).size} labels for {a.shape[0]} assignment rows")
    geo = prototype_geometry(a, k_count, int(o["top_positions"]))
    last = rise = cut = None
    if intensities is not None:
        it = np.asarray(intensities, dtype=np.float64)
        if it.ndim != 3 or it.shape[1:] != (a.shape[0], k_count):
            raise ValueError(f"intensities must be (T, {a.shape[0]}, {k_count}), got {it.shape}")
        if it.shape[0]:
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                last = np.nanmean(it[-1], axis=0)
            cut = float(np.nanquantile(last, o["min_intensity_quantile"])) if np.isfinite(last).any() else -np.inf
            if o["max_rise"] is not None and it.shape[0] > 1:
                rise = intensity_rise(it)
    rel = np.asarray(reliance.reliance, dtype=np.float64)
    drop = np.asarray(reliance.drop, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_loc = rel / geo["per_image"]
        local = np.where(drop > 0, rel / np.where(drop > 0, drop, 1.0), np.nan)

    def criteria(k: int) -> tuple[Criterion, ...]:
        out = [Criterion("images", float(reliance.count[k]), float(o["min_images"])),
               Criterion("reliance", float(rel[k]), float(o["min_reliance"])),
               Criterion("per location", float(per_loc[k]), float(o["min_reliance_per_location"])),
               Criterion("localised", float(local[k]), float(o["min_localisation"]))]
        if last is not None:
            out.append(Criterion("salient", float(last[k]), cut))
        if rise is not None:
            out.append(Criterion("rise", float(rise[k]), float(o["max_rise"]), at_least=False))
        if o["position"]:
            out += [Criterion("concentration", float(geo["concentration"][k]), float(o["min_concentration"])),
                    Criterion("border", float(geo["border"][k]), float(o["min_border"]))]
        return tuple(out)

    order = [int(k) for k in np.argsort(-np.nan_to_num(rel, nan=-np.inf), kind="stable")]
    cands = {k: criteria(k) for k in order}
    suspects = tuple(k for k in order if all(c.passed for c in cands[k]))
    note = ""
    if reliance.intervention == "pixels" and reliance.fill == "blur":
        note = "reliance measured with the blur, which leaves uniform content such as a shade swatch in place; measure it with fill=\"resample\""
    if suspects:
        return SuspectReport(suspects, "suspects", tuple(SuspectCandidate(k, cands[k]) for k in suspects), note)
    # abstain when every prototype whose area costs the model something (hiding as much at random
    # drops the true class by >= min_reliance) costs about what that area costs anywhere
    rnd = np.asarray(reliance.random_drop, dtype=np.float64)
    measured = np.isfinite(drop) & np.isfinite(rnd) & (np.asarray(reliance.count) >= o["min_images"])
    costly = measured & (np.nan_to_num(rnd, nan=-np.inf) >= o["min_reliance"])
    like_area = np.abs(drop - rnd) <= (1.0 - float(o["min_localisation"])) * rnd
    verdict = "not localised" if costly.any() and like_area[costly].all() else "none"
    top = [k for k in order if np.isfinite(rel[k])][: max(0, int(top_candidates))]
    return SuspectReport((), verdict, tuple(SuspectCandidate(k, cands[k]) for k in top), note)


def suspect_prototypes(
    reliance: Reliance,
    assignment: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    intensities: np.ndarray | None = None,
    confidences: np.ndarray | None = None,
    num_prototypes: int | None = None,
    **thresholds,
) -> list[int]:
    """The suspect ids of ``suspect_report`` (same arguments), most reliant first."""
    return list(suspect_report(reliance, assignment, labels, intensities=intensities, confidences=confidences,
                               num_prototypes=num_prototypes, **thresholds).suspects)
