"""The option groups of recording and analysis: the probe pass, the prototypes, the explanation, the views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from .._core import fail, is_int, is_number
from ._base import (
    SALIENCY_THRESHOLD,
    SIGNIFICANCE_METHODS,
    UNCERTAIN_RULES,
    CamTarget,
    PrototypeSource,
    Significance,
    UncertainRule,
    _bool,
    _choice,
    _fraction,
    _int,
    _number,
    _Options,
    _set,
)


@dataclass(frozen=True)
class IGOSOptions(_Options):
    """I-GOS / iGOS++ in the probe pass (``cam="igos"`` or ``"igos++"``; ``saliency.igos_maps``).

    mask_size: the mask's side; None: four times the target layer's map side, at most the image's
        (``saliency.default_mask_side``: the authors' 28 x 28 masks over 7 x 7 maps), averaged
        back over each feature cell for the prototypes.
    iterations: optimisation steps (the authors' 15).
    ig_iter: points on each integration path (the authors' 20).
    L1: weight of the deletion's area.
    L2: weight of the smoothness term at the authors' 28 x 28 masks.
    scale_smoothness: rescale ``L2`` to the mask's side (``saliency.smoothness_weight``).
    baseline: ``"authors"`` (a blur of the authors' effective reach, 0.065 of the side) or
        ``"strong"`` (0.22 of the side, 0.2's baseline).
    noise: sd of the path points' noise in the authors' units (ImageNet-normalised inputs).
    noise_relative: scale ``noise`` to each image's value range (False: an absolute sd).
    seed: the noise's generator.
    batch_size: images optimised together.
    """

    LEGACY: ClassVar[dict[str, Any]] = {"mask_size": None, "scale_smoothness": False, "baseline": "strong", "noise_relative": False}

    mask_size: int | None = None
    iterations: int = 15
    ig_iter: int = 20
    L1: float = 1.0
    L2: float = 20.0
    scale_smoothness: bool = True
    baseline: str = "authors"
    noise: float = 0.2
    noise_relative: bool = True
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self):
        _int(self, "mask_size", optional=True)
        _int(self, "iterations")
        _int(self, "ig_iter")
        _number(self, "L1")
        _number(self, "L2")
        _bool(self, "scale_smoothness")
        _choice(self, "baseline", ("authors", "strong"))
        _number(self, "noise")
        _bool(self, "noise_relative")
        _int(self, "seed", low=0)
        _int(self, "batch_size")

    @classmethod
    def legacy(cls) -> IGOSOptions:
        """The settings 0.2 ran I-GOS at: masks at the layer's resolution, unscaled smoothness, the
        strong blur, absolute noise."""
        return cls(**cls.LEGACY)

    def igos_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``saliency.igos_probe_batch``."""
        return self.to_dict()


@dataclass(frozen=True)
class ProbePassOptions(_Options):
    """How the probe pass runs.

    cam_target: ``"label"`` (the true class) or ``"predicted"``.
    batch_size: probe images per forward; bounds the explainer's memory.
    normalise_maps: min-max normalise each map (pytorch-grad-cam's convention); False keeps raw
        GradCAM values (native path only).
    store_images: keep the probe images (float16) in the run, for galleries and reports, when they
        take at most 64 MiB.
    igos: ``IGOSOptions``, the settings of ``cam="igos"`` / ``"igos++"`` (a run stored by 0.2 reads
        as ``IGOSOptions.legacy()``, what it ran).
    """

    LEGACY: ClassVar[dict[str, Any]] = {"igos": dict(IGOSOptions.LEGACY)}

    cam_target: CamTarget = "label"
    batch_size: int = 256
    normalise_maps: bool = True
    store_images: bool = True
    igos: IGOSOptions = IGOSOptions()

    def __post_init__(self):
        if isinstance(self.igos, dict):  # read back from to_dict() or YAML
            _set(self, "igos", IGOSOptions.from_dict(self.igos, strict=False))
        if not isinstance(self.igos, IGOSOptions):
            fail(self, "igos", "an IGOSOptions", self.igos)
        _choice(self, "cam_target", get_args(CamTarget))
        _int(self, "batch_size")
        _bool(self, "normalise_maps")
        _bool(self, "store_images")


@dataclass(frozen=True)
class PrototypeOptions(_Options):
    """How the K prototypes are fitted at each record.

    source: ``"kmeans"`` (PCA then k-means, FAISS; ids matched between records) or
        ``"channels"`` (EPIC's prediction-preserving unmixing of the target layer's channels,
        fitted on the probe features; each location goes to its largest unmixed channel among the
        K the head weighs most; ids are channel indices, so no matching: ``lightning_i2x.channels``).
        The channel source needs K <= the layer's channels and a global average pool + linear
        head after the target layer. A run stored before 0.3 reads as ``"kmeans"``.
    pca_components: dimension of the PCA space the centroids live in (k-means).
    kmeans_iters: k-means iterations.
    seed: k-means (and k-means++ start) seed; the order of EPIC's batches.
    epic_epochs: EPIC's epochs over the probe features at each record (channels).
    """

    LEGACY: ClassVar[dict[str, Any]] = {"source": "kmeans", "epic_epochs": 20}

    pca_components: int = 64
    kmeans_iters: int = 20
    seed: int = 0
    source: PrototypeSource = "kmeans"
    epic_epochs: int = 20

    def __post_init__(self):
        _int(self, "pca_components")
        _int(self, "kmeans_iters")
        _int(self, "seed", low=0)
        _choice(self, "source", get_args(PrototypeSource))
        _int(self, "epic_epochs")


@dataclass(frozen=True)
class ExplainOptions(_Options):
    """Steps 3-6 of the method (the defaults are the method's; see ``I2X-METHOD``).

    ridge_lambda: ridge penalty of the per-interval regression (Step 5).
    tau: significance threshold of a coefficient: ``"auto"`` (tau_scale x the run's coefficient
        standard deviation) or an absolute number.
    tau_scale: multiplier of the automatic threshold.
    min_flips: reversals (``"edges"``) or sign flips (``"difference"``) that make a prototype
        uncertain; default 1 (one reversal is the alternation the paper describes; at 2 the edge
        rule found a pair in 1 of 5 MNIST protocol seeds, at 1 in all 5: docs, "Reading a run").
    uncertain_rule: what "uncertain for the pair (a, b)" means. ``"edges"`` (the default of new
        runs): the edge between a and b reverses: at interval t prototype k moves confidence from b
        to a (``beta[t][k, a]`` significantly positive and ``beta[t][k, b]`` significantly negative)
        and at a later interval with an edge from a to b, or the other way round; counted in
        reversals, ranked by reversals x the mean over the edge intervals of
        ``min(|beta[t][k, a]|, |beta[t][k, b]|)`` (``analysis.pair_reversals``).
        ``"difference"`` (0.1 and 0.2): the sign of ``beta[t][k, a] - beta[t][k, b]`` flips across
        the intervals where it is significant, which also happens when a's coefficient alone
        oscillates, whatever b's does; ranked by flips x mean magnitude (``analysis.pair_flips``).
        The learning order reads the same rule.
    significance: when a coefficient counts as positive or negative (default ``"stderr"``). ``"tau"`` (0.1 and 0.2):
        ``|beta| > tau``. ``"bootstrap"``: its (1 - significance_level) percentile interval over
        ``bootstrap_samples`` resamples of the probe images (with replacement, seeded by
        ``bootstrap_seed``, the same resamples for every interval; the ridge refitted on each)
        excludes 0; costs O(B N K (K + M)) per interval, vectorised (a few seconds for K=32, M=10,
        N=3000, 25 intervals, B=200; with ``"difference"``, M becomes M + M(M-1)/2). ``"stderr"``:
        the normal interval of the ridge's closed-form (HC0 sandwich) standard errors excludes 0;
        as cheap as the ridge. With ``"difference"`` the interval is that of the difference.
    significance_level: the intervals' level alpha (``"bootstrap"``, ``"stderr"``).
    bootstrap_samples, bootstrap_seed: B and the resamples' seed (``"bootstrap"``).
    shared_frac: a prototype present in the salient region of at least this fraction of a class's
        samples is shared by the class.
    specialised_frac: ... present in at least this fraction of one learning group's members of the
        class (and below shared_frac over the class) is specialised.
    min_cluster_size: HDBSCAN's minimum group size (Step 4); None: max(5, N // 50).
    max_cluster_samples: HDBSCAN clusters at most this many samples per interval (the rest take
        their nearest clustered neighbour's group); None: all.
    saliency_threshold: a location is salient when its min-max normalised map value is at least
        this (one definition everywhere: presence, overlays, targeted fine-tuning).

    A run stores its options; a stored set without the fields added after 0.2 (``LEGACY``) reads
    as 0.2 behaved (``uncertain_rule="difference"``, ``significance="tau"``), whatever the
    defaults of new runs are: ``from_stored``.
    """

    LEGACY: ClassVar[dict[str, Any]] = {
        "uncertain_rule": "difference", "significance": "tau", "significance_level": 0.05, "bootstrap_samples": 200,
        "bootstrap_seed": 0,
    }
    """The fields added in 0.3 and the values that give 0.2's behaviour (a stored run without them)."""

    ridge_lambda: float = 1.0
    tau: float | Literal["auto"] = "auto"
    tau_scale: float = 1.0
    min_flips: int = 1
    shared_frac: float = 0.8
    specialised_frac: float = 0.5
    min_cluster_size: int | None = None
    max_cluster_samples: int | None = 2048
    saliency_threshold: float = SALIENCY_THRESHOLD
    uncertain_rule: UncertainRule = "edges"
    significance: Significance = "stderr"
    significance_level: float = 0.05
    bootstrap_samples: int = 200
    bootstrap_seed: int = 0

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
        _choice(self, "uncertain_rule", UNCERTAIN_RULES)
        _choice(self, "significance", SIGNIFICANCE_METHODS)
        if not (is_number(self.significance_level) and 0 < self.significance_level < 1):
            fail(self, "significance_level", "a number in (0, 1)", self.significance_level)
        _int(self, "bootstrap_samples", low=2)
        _int(self, "bootstrap_seed", low=0)
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
    max_text_classes: every class gets its markdown text at each record when the run has at most
        this many classes; above, only the drawn classes do (the summary text says so), since with
        M classes the text lists M(M-1)/2 pairs and 1,000 texts a record swamp the event file.
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
    max_text_classes: int = 100
    dpi: int = 80
    time_budget: float | None = 0.02

    def __post_init__(self):
        _bool(self, "figures")
        if self.classes is not None:
            classes = (self.classes,) if isinstance(self.classes, (str, int)) else tuple(self.classes)
            if not classes or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes):
                fail(self, "classes", "a non-empty list of class indices or names, or None", self.classes)
            _set(self, "classes", classes)
        for name in ("max_classes", "max_pairs", "overlay_samples", "gallery_patches", "gallery_prototypes", "scalar_prototypes",
                     "max_text_classes"):
            _int(self, name, low=0)
        _int(self, "max_rows")
        _int(self, "dpi", low=20, high=300)
        _fraction(self, "time_budget", optional=True)
