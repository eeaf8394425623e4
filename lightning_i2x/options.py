"""Typed option groups, each checked once, in one style.

Every group is a frozen dataclass validated in ``__post_init__``; a bad value raises ``ValueError``
with the message ``"<Group>.<field> must be <what>, got <value>"``, when the group is built (so at
``I2XCallback(...)``, before any training). ``I2XCallback`` takes the groups as arguments, the
LightningCLI reads them from nested YAML, and the run stores them (``RunConfig``) in its manifest.

Example::

    >>> ExplainOptions(min_flips=3).min_flips
    3
    >>> ExplainOptions(shared_frac=2.0)
    Traceback (most recent call last):
    ...
    ValueError: ExplainOptions.shared_frac must be a fraction in (0, 1], got 2.0
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from ._core import check_bool, check_choice, check_fraction, check_int, check_number, fail, is_int
from .errors import OptionsError

__all__ = [
    "CamTarget",
    "ProbePassOptions",
    "PrototypeOptions",
    "ExplainOptions",
    "ViewOptions",
    "FinetuneOptions",
    "RunConfig",
    "OptionsError",
    "FILLS",
    "SALIENCY_THRESHOLD",
    "check_groups",
]

CamTarget = Literal["label", "predicted"]
FinetuneMode = Literal["remove", "mask"]
MaskFill = Literal["blur", "noise", "baseline", "random"]
FILLS: tuple[str, ...] = get_args(MaskFill)
"""The fills that hide pixels (``lightning_i2x.perturb``), in the order a stored reliance indexes them."""
MaskRegion = Literal["salient", "all"]
Phase = Literal["curated", "full"]

SALIENCY_THRESHOLD = 0.5
"""The method's default: a location is salient when its min-max normalised saliency is >= 0.5."""


# -- the checks of _core, reading the field by name -----------------------------------------------------
def _int(obj: Any, name: str, low: int = 1, high: int | None = None, optional: bool = False) -> None:
    check_int(obj, name, getattr(obj, name), low, high, optional)


def _fraction(obj: Any, name: str, optional: bool = False, closed_low: bool = False) -> None:
    check_fraction(obj, name, getattr(obj, name), optional, closed_low)


def _number(obj: Any, name: str, low: float = 0.0, strict: bool = False, optional: bool = False) -> None:
    check_number(obj, name, getattr(obj, name), low, strict, optional)


def _choice(obj: Any, name: str, choices: Sequence[str]) -> None:
    check_choice(obj, name, getattr(obj, name), choices)


def _bool(obj: Any, name: str) -> None:
    check_bool(obj, name, getattr(obj, name))


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


class _Options:
    """Shared behaviour: plain-dict round trip, strict about names."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True):
        """Build from ``to_dict()`` output. ``strict``: every field must be there (a stored run);
        otherwise missing fields take their defaults. Unknown names always fail."""
        if not isinstance(values, dict):
            raise OptionsError(f"{cls.__name__} must be stored as a mapping, got {type(values).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise OptionsError(f"{cls.__name__} has no option(s) {unknown}; its options are {sorted(names)}")
        missing = sorted(names - set(values))
        if strict and missing:
            raise OptionsError(f"{cls.__name__} is missing {missing}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise OptionsError(str(e)) from None


# -- the groups -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbePassOptions(_Options):
    """How the probe pass runs.

    cam_target: ``"label"`` (the true class) or ``"predicted"``.
    batch_size: probe images per forward; bounds the explainer's memory.
    normalise_maps: min-max normalise each map (pytorch-grad-cam's convention); False keeps raw
        GradCAM values (native path only).
    store_images: keep the probe images (float16) in the run, for galleries and reports, when they
        take at most 64 MiB.
    """

    cam_target: CamTarget = "label"
    batch_size: int = 256
    normalise_maps: bool = True
    store_images: bool = True

    def __post_init__(self):
        _choice(self, "cam_target", get_args(CamTarget))
        _int(self, "batch_size")
        _bool(self, "normalise_maps")
        _bool(self, "store_images")


@dataclass(frozen=True)
class PrototypeOptions(_Options):
    """How the K prototypes are fitted at each record (PCA then k-means, FAISS).

    pca_components: dimension of the PCA space the centroids live in.
    kmeans_iters: k-means iterations.
    seed: k-means (and k-means++ start) seed.
    """

    pca_components: int = 64
    kmeans_iters: int = 20
    seed: int = 0

    def __post_init__(self):
        _int(self, "pca_components")
        _int(self, "kmeans_iters")
        _int(self, "seed", low=0)


@dataclass(frozen=True)
class ExplainOptions(_Options):
    """Steps 3-6 of the method (the defaults are the method's; see ``I2X-METHOD``).

    ridge_lambda: ridge penalty of the per-interval regression (Step 5).
    tau: significance threshold of a coefficient: ``"auto"`` (tau_scale x the run's coefficient
        standard deviation) or an absolute number.
    tau_scale: multiplier of the automatic threshold.
    min_flips: sign flips of a pair difference that make a prototype uncertain.
    shared_frac: a prototype present in the salient region of at least this fraction of a class's
        samples is shared by the class.
    specialised_frac: ... present in at least this fraction of one learning group's members of the
        class (and below shared_frac over the class) is specialised.
    min_cluster_size: HDBSCAN's minimum group size (Step 4); None: max(5, N // 50).
    max_cluster_samples: HDBSCAN clusters at most this many samples per interval (the rest take
        their nearest clustered neighbour's group); None: all.
    saliency_threshold: a location is salient when its min-max normalised map value is at least
        this (one definition everywhere: presence, overlays, targeted fine-tuning).
    """

    ridge_lambda: float = 1.0
    tau: float | Literal["auto"] = "auto"
    tau_scale: float = 1.0
    min_flips: int = 2
    shared_frac: float = 0.8
    specialised_frac: float = 0.5
    min_cluster_size: int | None = None
    max_cluster_samples: int | None = 2048
    saliency_threshold: float = SALIENCY_THRESHOLD

    def __post_init__(self):
        _number(self, "ridge_lambda")
        if self.tau != "auto":
            _number(self, "tau")
        _number(self, "tau_scale", strict=True)
        _int(self, "min_flips")
        _fraction(self, "shared_frac")
        _fraction(self, "specialised_frac")
        _int(self, "min_cluster_size", low=2, optional=True)
        _int(self, "max_cluster_samples", low=2, optional=True)
        _fraction(self, "saliency_threshold")
        if is_int(self.tau):
            _set(self, "tau", float(self.tau))

    def analysis_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``lightning_i2x.explain`` (all but the saliency threshold)."""
        d = self.to_dict()
        d.pop("saliency_threshold")
        return d


@dataclass(frozen=True)
class ViewOptions(_Options):
    """What is drawn per record; the defaults keep a 10-class run readable and its event file small
    (figures for 3 classes and 2 pairs, about a dozen images per record).

    figures: write the images (False: scalars and text only).
    classes: the classes drawn (indices or names); None picks up to ``max_classes``: those of the
        pairs drawn, then the least confident.
    max_classes, max_pairs: bounds on the classes drawn and on the confused pairs drawn (pairs
        with uncertain prototypes first, then the pairs most confused on the probe).
    overlay_samples: probe images per drawn class in the overlay (0: no overlays).
    gallery_patches: patches per prototype in the gallery (0: no gallery).
    gallery_prototypes: at most this many prototypes in the gallery (uncertain ones first).
    max_rows: prototypes per evolution grid or pair view.
    scalar_prototypes: prototypes whose intensity is logged (uncertain ones first).
    dpi: resolution of every image (a 6-inch figure is 6 x dpi pixels wide).
    time_budget: the images of a record are drawn only when the last drawing took at most this
        fraction of the time since it ended, so drawing stays a bounded share of training on short
        epochs; scalars and text are written at every record, and the end of fit draws the latest
        explanation if its images were skipped. None: always draw.
    """

    figures: bool = True
    classes: tuple[int | str, ...] | None = None
    max_classes: int = 3
    max_pairs: int = 2
    overlay_samples: int = 2
    gallery_patches: int = 8
    gallery_prototypes: int = 32
    max_rows: int = 12
    scalar_prototypes: int = 8
    dpi: int = 80
    time_budget: float | None = 0.02

    def __post_init__(self):
        _bool(self, "figures")
        if self.classes is not None:
            classes = (self.classes,) if isinstance(self.classes, (str, int)) else tuple(self.classes)
            if not classes or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes):
                fail(self, "classes", "a non-empty list of class indices or names, or None", self.classes)
            _set(self, "classes", classes)
        for name in ("max_classes", "max_pairs", "overlay_samples", "gallery_patches", "gallery_prototypes", "scalar_prototypes"):
            _int(self, name, low=0)
        _int(self, "max_rows")
        _int(self, "dpi", low=20, high=300)
        _fraction(self, "time_budget", optional=True)


@dataclass(frozen=True)
class FinetuneOptions(_Options):
    """Step 7, targeted fine-tuning: what ``PerturbationFinetuner(run, options)`` and
    ``I2XCallback(auto_finetune=True, finetune=...)`` do.

    pairs: class pairs to target (indices or names); None: the ``top_pairs`` best uncertain pairs
        of the explanation. Each pair's uncertain prototypes are targeted.
    prototypes: prototype ids to target in samples of every class, or ``"suspects"`` (the run's
        shortcut suspects, which need a stored reliance); exclusive with ``pairs``. With
        ``mask_region="all"`` a sample is flagged wherever it holds one, the setting for a shortcut.
    mode: ``"remove"`` (the paper: the curated set leaves out the flagged samples), ``"mask"``
        (keeps them, perturbs the flagged regions' pixels) or ``"penalise"`` (keeps them, adds an
        explanation penalty on the flagged regions to the cross-entropy).
    penalty: ``mode="penalise"``'s term: ``"input_gradient"`` (RRR, double backpropagation: a step
        costs about twice as much) or ``"gradcam"`` (the GradCAM share inside the region). Penalise
        mode assumes a classifier trained with the cross-entropy of its forward's (B, M) scores on
        (image, label) batches: the module's own ``training_step`` is not called (its
        ``configure_optimizers`` is).
    penalty_ratio: the penalty's weight makes it start at this multiple of the cross-entropy
        (``balance_weight`` on the first flagged batch).
    control: also fine-tune a copy of the starting weights with ``full`` epochs only, the same
        number and seed, to tell the targeting's gain from more training's. Off by default: it
        doubles the time and holds a second copy of the model.
    schedule: the epochs in order, each ``"curated"`` or ``"full"``; ``("full", "full")`` is the
        baseline. The optimizer (and its state) carries over from epoch to epoch.
    lr: learning rate of the fine-tuning (set on every param group at the start); None keeps the
        module's ``configure_optimizers``.
    max_samples: a seeded random subset of this many training samples (the search and every
        epoch); None: all of them.
    seed: seeds the subset, the shuffling, dropout and the mask noise (the global RNG states are
        restored afterwards).
    mask_fill: ``"blur"``, ``"noise"``, ``"baseline"`` (``mask_baseline``, default the image's
        per-channel mean) or ``"random"`` (``lightning_i2x.perturb``).
    mask_region: ``"salient"``: the salient locations assigned to the targeted prototypes;
        ``"all"``: every location assigned to them.
    top_pairs, prototypes_per_pair: how many pairs ``pairs=None`` takes, and only the n
        highest-ranked uncertain prototypes of each pair.
    batch_size: images per search batch; None: the training loader's batch size.
    trainer_kwargs: extra ``pl.Trainer`` arguments (precision, accelerator, ...); by default no
        logger, no checkpoints, no validation loop, one device.
    explain: ``ExplainOptions`` of the explanation the targets come from when the caller passes
        none (None: the run's recorded ones); its ``saliency_threshold`` also decides which
        training locations are salient.
    out_dir: where the predictions and the result go; None: ``<run>/finetune``.
    """

    pairs: tuple[tuple[int | str, int | str], ...] | None = None
    mode: FinetuneMode | Literal["penalise"] = "remove"
    schedule: tuple[Phase, ...] = ("curated", "full")
    lr: float | None = None
    max_samples: int | None = None
    seed: int = 0
    mask_fill: MaskFill = "blur"
    mask_region: MaskRegion = "salient"
    mask_baseline: float | None = None
    top_pairs: int = 1
    prototypes_per_pair: int | None = None
    batch_size: int | None = None
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    prototypes: tuple[int, ...] | Literal["suspects"] | None = None
    penalty: Literal["input_gradient", "gradcam"] = "input_gradient"
    penalty_ratio: float = 1.0
    control: bool = False
    explain: ExplainOptions | None = None
    out_dir: str | None = None

    def __post_init__(self):
        if self.prototypes is not None and self.prototypes != "suspects":
            p = self.prototypes
            if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or not p or not all(is_int(k) and k >= 0 for k in p):
                fail(self, "prototypes", 'a non-empty list of prototype ids, "suspects" or None', p)
            _set(self, "prototypes", tuple(dict.fromkeys(int(k) for k in p)))
        if self.prototypes is not None and self.pairs is not None:
            fail(self, "prototypes", "None when pairs are given (target pairs or prototypes, not both)", self.prototypes)
        _choice(self, "penalty", ("input_gradient", "gradcam"))
        _number(self, "penalty_ratio", strict=True)
        _bool(self, "control")
        if self.pairs is not None:
            if isinstance(self.pairs, (str, bytes)) or not isinstance(self.pairs, Sequence) or not all(
                    isinstance(p, Sequence) and not isinstance(p, (str, bytes)) and len(p) == 2 for p in self.pairs) or not self.pairs:
                fail(self, "pairs", "a non-empty list of class pairs (a, b), or None", self.pairs)
            _set(self, "pairs", tuple(tuple(p) for p in self.pairs))
        _choice(self, "mode", (*get_args(FinetuneMode), "penalise"))
        sched = self.schedule
        if isinstance(sched, str) or not isinstance(sched, Sequence) or not sched or any(s not in get_args(Phase) for s in sched):
            fail(self, "schedule", f"a non-empty sequence of {get_args(Phase)} (one epoch each)", sched)
        _set(self, "schedule", tuple(sched))
        _number(self, "lr", strict=True, optional=True)
        _int(self, "max_samples", optional=True)
        _int(self, "seed", low=0)
        _choice(self, "mask_fill", get_args(MaskFill))
        _choice(self, "mask_region", get_args(MaskRegion))
        _number(self, "mask_baseline", low=-math.inf, optional=True)
        _int(self, "top_pairs")
        _int(self, "prototypes_per_pair", optional=True)
        _int(self, "batch_size", optional=True)
        if not isinstance(self.trainer_kwargs, dict):
            fail(self, "trainer_kwargs", "a dict of pl.Trainer arguments", self.trainer_kwargs)
        reserved = sorted(set(self.trainer_kwargs) & {"max_epochs", "min_epochs", "max_steps", "reload_dataloaders_every_n_epochs", "callbacks"})
        if reserved:
            fail(self, "trainer_kwargs", "free of the keys the schedule sets (max_epochs, callbacks, ...)", reserved)
        if isinstance(self.explain, dict):  # read back from to_dict() or YAML
            _set(self, "explain", ExplainOptions.from_dict(self.explain, strict=False))
        if self.explain is not None and not isinstance(self.explain, ExplainOptions):
            fail(self, "explain", "an ExplainOptions or None", self.explain)
        if isinstance(self.out_dir, os.PathLike):
            _set(self, "out_dir", os.fspath(self.out_dir))
        if self.out_dir is not None and (not isinstance(self.out_dir, str) or not self.out_dir):
            fail(self, "out_dir", "a directory path or None", self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["pairs"] = None if self.pairs is None else [list(p) for p in self.pairs]
        d["explain"] = None if self.explain is None else self.explain.to_dict()
        return d


@dataclass(frozen=True)
class RunConfig(_Options):
    """What a run was recorded with, stored in its manifest and read back strictly (format 2)."""

    target_layer: str
    cam: str
    every_n_epochs: int
    probe_pass: ProbePassOptions
    prototypes: PrototypeOptions
    explain: ExplainOptions

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_layer": self.target_layer, "cam": self.cam, "every_n_epochs": self.every_n_epochs,
            "probe_pass": self.probe_pass.to_dict(), "prototypes": self.prototypes.to_dict(), "explain": self.explain.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True) -> RunConfig:
        if not isinstance(values, dict):
            raise OptionsError(f"RunConfig must be stored as a mapping, got {type(values).__name__}")
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values))
        if unknown or missing:
            raise OptionsError(f"RunConfig: unknown {unknown}, missing {missing}")
        if not isinstance(values["target_layer"], str) or not isinstance(values["cam"], str) or not is_int(values["every_n_epochs"]):
            raise OptionsError(f"RunConfig: target_layer and cam must be strings, every_n_epochs an integer: {values!r}")
        return cls(
            values["target_layer"], values["cam"], values["every_n_epochs"],
            ProbePassOptions.from_dict(values["probe_pass"], strict=strict),
            PrototypeOptions.from_dict(values["prototypes"], strict=strict),
            ExplainOptions.from_dict(values["explain"], strict=strict),
        )

    @classmethod
    def from_version_1(cls, config: dict[str, Any]) -> RunConfig:
        """The typed form of a format-1 manifest's free-form ``config`` (lightning-i2x 0.1)."""
        c = dict(config)
        try:
            explain = ExplainOptions.from_dict(dict(c.get("explain_kwargs") or {}), strict=False)
            return cls(
                str(c["target_layer"]), str(c.get("cam", "gradcam")), int(c.get("every_n_epochs", 1)),
                ProbePassOptions(cam_target=c.get("cam_target", "label"), normalise_maps=bool(c.get("normalise_maps", True))),
                PrototypeOptions(pca_components=int(c.get("pca_components", 64)), kmeans_iters=int(c.get("kmeans_iters", 20)),
                                 seed=int(c.get("seed", 0))),
                explain,
            )
        except KeyError as e:
            raise OptionsError(f"a version-1 config without {e}") from None


def check_groups(owner: str, **groups: tuple[Any, type, bool]) -> None:
    """TypeError naming the argument when a value is not its option group: ``name=(value, group,
    none_allowed)``, e.g. ``check_groups("I2XCallback", views=(views, ViewOptions, False))``."""
    for name, (value, group, optional) in groups.items():
        if not (isinstance(value, group) or (optional and value is None)):
            raise TypeError(f"{owner}.{name} must be a lightning_i2x.{group.__name__}{' or None' if optional else ''}, got {type(value).__name__}")


def replace(options: Any, **changes: Any) -> Any:
    """A copy of an option group with some fields changed (validated again)."""
    return dataclasses.replace(options, **changes)
