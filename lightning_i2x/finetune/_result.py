"""What a targeted fine-tuning did and measured: plain data (no figure), written as
``result.json`` and read by the loggers (``viz.log_finetune``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..analysis import Pair
from ._targets import PairTarget, PrototypeTarget, Target
from ._uncertainty import GainInterval, paired_gain

__all__ = ["FinetuneResult", "gain_intervals"]

NOTHING_TRAINED = "nothing was trained (the weights are unchanged)"


def gain_intervals(labels: np.ndarray, pred_before: np.ndarray, pred_after: np.ndarray, pred_control: np.ndarray | None,
                   seed: int = 0) -> dict[str, GainInterval]:
    """The paired intervals of every gain a result claims: ``"accuracy"`` (after vs before),
    with a control also ``"targeting"`` (after vs the control) and ``"control"`` (control vs before)."""
    out = {"accuracy": paired_gain(labels, pred_before, pred_after, seed=seed)}
    if pred_control is not None:
        out["targeting"] = paired_gain(labels, pred_control, pred_after, seed=seed)
        out["control"] = paired_gain(labels, pred_before, pred_control, seed=seed)
    return out


@dataclass
class FinetuneResult:
    """What a targeted fine-tuning did and measured (``to_dict()`` for JSON).

    targets: the ``PairTarget``s or the one ``PrototypeTarget`` fine-tuned against.
    confusions_before / confusions_after: {(a, b): (a predicted as b, b predicted as a)} on the
    validation set for the targeted pairs; removed_or_masked: {(a, b): training samples flagged for
    the pair}; flagged: the samples a ``PrototypeTarget`` flagged. ``skipped_reason`` is set (and
    the numbers are None) when nothing was done: then nothing was trained, the weights are
    bitwise unchanged, and ``to_markdown()`` says so and why.

    gains: the paired intervals of the claimed gains (``GainInterval``, a seeded bootstrap over the
    validation images, with the exact McNemar p-value): ``"accuracy"`` (after - before),
    ``"targeting"`` (after - control) and ``"control"`` (control - before) with a control. A gain
    whose 95 % interval holds 0 is reported "within noise". latent_rank: the dimension of the
    subspace ``mode="latent"`` penalised."""

    targets: list[Target]
    class_names: list[str]
    mode: str
    schedule: tuple[str, ...]
    removed_or_masked: dict[Pair, int] = field(default_factory=dict)
    num_train_samples: int = 0
    num_curated_samples: int | None = None
    num_val_samples: int = 0
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    confusions_before: dict[Pair, tuple[int, int]] = field(default_factory=dict)
    confusions_after: dict[Pair, tuple[int, int]] = field(default_factory=dict)
    confusion_matrix_before: np.ndarray | None = None
    confusion_matrix_after: np.ndarray | None = None
    seed: int = 0
    lr: float | None = None
    mask_fill: str | None = None
    skipped_reason: str | None = None
    out_dir: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    flagged: int | None = None
    penalty: str | None = None
    penalty_weight: float | None = None
    control_accuracy_after: float | None = None
    control_confusions_after: dict[Pair, tuple[int, int]] = field(default_factory=dict)
    control_confusion_matrix_after: np.ndarray | None = None
    gains: dict[str, GainInterval] = field(default_factory=dict)
    latent_rank: int | None = None
    latent_layers: str | None = None

    @property
    def pairs(self) -> list[Pair]:
        """The targeted class pairs (none when prototypes are targeted in every class)."""
        return [t.classes for t in self._pair_targets]

    @property
    def _pair_targets(self) -> list[PairTarget]:
        return [t for t in self.targets if isinstance(t, PairTarget)]

    @property
    def target_prototypes(self) -> list[int]:
        """The prototypes targeted in every class (none when pairs are targeted)."""
        return [k for t in self.targets if isinstance(t, PrototypeTarget) for k in t.prototypes]

    @property
    def has_control(self) -> bool:
        return self.control_accuracy_after is not None

    @property
    def targeting_gain(self) -> float | None:
        """Accuracy after targeting minus after the same budget of plain training (None without a control)."""
        if self.skipped or not self.has_control:
            return None
        return float(self.accuracy_after - self.control_accuracy_after)

    @property
    def skipped(self) -> bool:
        """Nothing was trained (``skipped_reason`` says why)."""
        return self.skipped_reason is not None

    def gain_is_noise(self, which: str = "targeting") -> bool | None:
        """Whether the 95 % interval of a gain (``"accuracy"``, ``"targeting"``, ``"control"``)
        holds 0; None when the result has no such gain."""
        g = self.gains.get(which)
        return None if g is None else g.within_noise

    def targeted_confusions(self, when: str = "after") -> int | None:
        """Confusions of all targeted pairs, both directions, before or after."""
        conf = {"before": self.confusions_before, "after": self.confusions_after}[when]
        return None if self.skipped else int(sum(a + b for a, b in conf.values()))

    def _name(self, c: int) -> str:
        return self.class_names[c]

    def to_dict(self) -> dict:
        pairs = []
        for t in self._pair_targets:
            p = t.classes
            a, b = p
            entry = {"classes": [a, b], "names": [self._name(a), self._name(b)], "prototypes": list(t.prototypes),
                     "removed_or_masked": self.removed_or_masked.get(p)}
            for when, conf in (("before", self.confusions_before), ("after", self.confusions_after)):
                if p in conf:
                    ab, ba = conf[p]
                    entry[f"confusions_{when}"] = {f"{self._name(a)}->{self._name(b)}": int(ab),
                                                   f"{self._name(b)}->{self._name(a)}": int(ba), "total": int(ab + ba)}
            pairs.append(entry)
        cm = lambda m: None if m is None else np.asarray(m).astype(int).tolist()  # noqa: E731
        return {
            "mode": self.mode, "schedule": list(self.schedule), "mask_fill": self.mask_fill, "seed": self.seed, "lr": self.lr,
            "class_names": list(self.class_names), "targets": [t.to_dict() for t in self.targets], "pairs": pairs,
            "num_train_samples": self.num_train_samples, "num_curated_samples": self.num_curated_samples,
            "num_val_samples": self.num_val_samples,
            "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
            "targeted_confusions_before": self.targeted_confusions("before"),
            "targeted_confusions_after": self.targeted_confusions("after"),
            "confusion_matrix_before": cm(self.confusion_matrix_before), "confusion_matrix_after": cm(self.confusion_matrix_after),
            "skipped_reason": self.skipped_reason, "out_dir": self.out_dir,
            "seconds": {k: round(float(v), 3) for k, v in self.seconds.items()},
            "target_prototypes": [int(k) for k in self.target_prototypes], "flagged": self.flagged,
            "penalty": self.penalty, "penalty_weight": self.penalty_weight,
            "control_accuracy_after": self.control_accuracy_after, "targeting_gain": self.targeting_gain,
            "control_targeted_confusions_after": (int(sum(a + b for a, b in self.control_confusions_after.values()))
                                                  if self.has_control and self.pairs else None),
            "control_confusion_matrix_after": cm(self.control_confusion_matrix_after),
            "gain_intervals": {k: v.to_dict() for k, v in self.gains.items()},
            "latent_rank": self.latent_rank, "latent_layers": self.latent_layers,
            "trained": not self.skipped,
        }

    def to_markdown(self) -> str:
        if self.skipped:
            return f"Targeted fine-tuning skipped: {NOTHING_TRAINED}. Why: {self.skipped_reason}.\n"
        how = f"mode `{self.mode}`" + (f" ({self.penalty} penalty, weight {self.penalty_weight:.3g})"
                                        if self.mode == "penalise" and self.penalty_weight is not None else "")
        if self.mode == "latent":
            how += (f" (RR-ClArC on a {self.latent_rank}-dimensional subspace, layers {self.latent_layers} the target layer"
                    + (f", weight {self.penalty_weight:.3g})" if self.penalty_weight is not None else ")"))
        acc = self.gains.get("accuracy")
        head = (f"Targeted fine-tuning, {how}, schedule {' -> '.join(self.schedule)}: "
                f"accuracy {100 * self.accuracy_before:.2f} % -> {100 * self.accuracy_after:.2f} % "
                f"on {self.num_val_samples} validation samples" + (f", a change of {acc.describe()}" if acc is not None else ""))
        if self.has_control:
            gain = 100 * self.targeting_gain
            tg = self.gains.get("targeting")
            head += (f"; the same budget of plain training ({' -> '.join('full' for _ in self.schedule)} from the same "
                     f"weights): {100 * self.control_accuracy_after:.2f} %; targeting adds "
                     + (f"{tg.describe()}." if tg is not None else f"{gain:+.2f} points (no interval)."))
        else:
            head += (". No same-budget control was run (control=True): part of this change may be the extra "
                     "training, not the targeting.")
        if self.target_prototypes and self.mode == "latent":
            protos = ", ".join(f"P-{k}" for k in self.target_prototypes)
            return f"{head}\n\nTargeted prototypes (any class): {protos}; their directions at the target layer were penalised on every training sample.\n"
        if self.target_prototypes:
            verb = {"remove": "removed", "mask": "masked", "penalise": "penalised"}.get(self.mode, "flagged")
            protos = ", ".join(f"P-{k}" for k in self.target_prototypes)
            return f"{head}\n\nTargeted prototypes (any class): {protos}; training samples {verb}: {self.flagged}.\n"
        lines = [
            head,
            "",
            "| pair | uncertain prototypes | training samples removed/masked | confusions before | confusions after |",
            "|---|---|---|---|---|",
        ]
        for t in self._pair_targets:
            p = t.classes
            a, b = (self._name(c) for c in p)
            (ab0, ba0), (ab1, ba1) = self.confusions_before[p], self.confusions_after[p]
            protos = ", ".join(f"P-{k}" for k in t.prototypes) or "none"
            lines.append(f"| {a} <-> {b} | {protos} | {self.removed_or_masked.get(p, 0)} | "
                         f"{ab0 + ba0} ({a}->{b} {ab0}, {b}->{a} {ba0}) | {ab1 + ba1} ({a}->{b} {ab1}, {b}->{a} {ba1}) |")
        return "\n".join(lines) + "\n"
