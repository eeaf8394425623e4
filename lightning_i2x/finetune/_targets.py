"""What a fine-tuning targets, typed: a class pair's uncertain prototypes (the paper), or
prototypes in every class (a shortcut). Each target decides which training samples it flags, so
the search needs no sentinel pair for "any class"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import Explanation, Pair, pair_prototypes
from ..errors import I2XRunError
from ..store import I2XRun

__all__ = ["PairTarget", "PrototypeTarget", "Target", "target_from_dict", "pair_targets", "prototype_target"]


def _ids(prototypes: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(k) for k in prototypes)


@dataclass(frozen=True)
class PairTarget:
    """The uncertain prototypes of the class pair (a, b), best first: they flag the samples of class
    a or b that hold one at a salient location (the samples that confuse the model about the pair)."""

    classes: Pair
    prototypes: tuple[int, ...]

    def __post_init__(self):
        a, b = self.classes
        object.__setattr__(self, "classes", (int(a), int(b)))
        object.__setattr__(self, "prototypes", _ids(self.prototypes))

    def flags(self, holds: np.ndarray, salient: np.ndarray, labels: np.ndarray, region: str) -> np.ndarray:
        """(B,) flagged samples; ``holds`` (B, L): the location is assigned to one of the prototypes.
        ``region`` only decides what is perturbed: a pair is flagged on its salient locations."""
        a, b = self.classes
        return ((labels == a) | (labels == b)) & (holds & salient).any(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "prototypes": list(self.prototypes)}


@dataclass(frozen=True)
class PrototypeTarget:
    """Prototypes targeted in every class (``FinetuneOptions(prototypes=...)``, a shortcut): they
    flag any sample that holds one at a salient location, or anywhere with ``region="all"``: a
    shortcut is hidden wherever it is, else the model goes on learning it from the images where
    the saliency missed it."""

    prototypes: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "prototypes", _ids(self.prototypes))

    def flags(self, holds: np.ndarray, salient: np.ndarray, labels: np.ndarray, region: str) -> np.ndarray:
        """(B,) flagged samples, whatever their label."""
        return (holds if region == "all" else holds & salient).any(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": None, "prototypes": list(self.prototypes)}


Target = PairTarget | PrototypeTarget


def target_from_dict(values: dict[str, Any]) -> Target:
    """The target of ``to_dict()`` (``classes`` None: every class)."""
    if values.get("classes") is None:
        return PrototypeTarget(values["prototypes"])
    return PairTarget(tuple(values["classes"]), values["prototypes"])


def prototype_target(run: I2XRun, prototypes: Sequence[int] | str | None) -> PrototypeTarget | None:
    """``FinetuneOptions.prototypes`` checked against the run: None, ids, ``"marked"`` (those marked
    ``"shortcut"``, ``I2XRun.marks``; I2XRunError when none is) or ``"suspects"`` (the
    run's shortcut suspects; I2XRunError naming what to do when it stores no reliance)."""
    if prototypes is None:
        return None
    if prototypes == "suspects":
        return PrototypeTarget(run.suspects())
    if prototypes == "marked":  # what people marked "shortcut" in the dashboard (marks.json)
        marked = sorted(k for k, mark in run.marks().items() if mark == "shortcut")
        if not marked:
            raise I2XRunError(f"{run.path} has no prototype marked \"shortcut\" (of its current prototypes): mark them in the "
                              "dashboard (i2x serve) or with run.set_mark(k, \"shortcut\")")
        return PrototypeTarget(marked)
    k = run.num_prototypes
    unknown = [p for p in prototypes if not 0 <= p < k]
    if unknown:
        raise ValueError(f"prototypes {unknown} are not prototypes of the run; its prototypes are 0..{k - 1}")
    return PrototypeTarget(prototypes)


def pair_targets(explanation: Explanation, pairs: Sequence[Pair] | None, top_pairs: int,
                 prototypes_per_pair: int | None) -> list[PairTarget]:
    """Each pair with its uncertain prototypes (possibly none); ``pairs`` None: the explanation's
    ``top_pairs`` best uncertain pairs."""
    pairs = pairs if pairs is not None else explanation.uncertain_pairs()[:top_pairs]
    return [PairTarget(p, ks[:prototypes_per_pair]) for p, ks in pair_prototypes(explanation.uncertain, pairs).items()]
