"""``XFeatureMeasure``: XNN's x-features at the end of fit, inside ``I2XCallback(measures=[...])``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._core import fail, field_int, set_field
from .._model import ForwardFn
from ..xfeatures import SRAEOptions, XFeatureExplainer, store_xfeatures

__all__ = ["XFeatureMeasure"]


@dataclass(frozen=True)
class XFeatureMeasure:
    """Fit the x-features of ``classes`` (None: every class) on the final model at the end of fit.

    It fits an ``XFeatureExplainer`` on the run's probe images and target layer, stores the
    per-class panels (attachment ``"xfeatures"``: n_x, held-out R^2, top probe images with their
    GradCAM maps, every image's contributions; ``xfeatures.stored_xfeatures`` reads them, the
    views draw them as ``i2x/class<n>/xfeatures``, the report and the dashboard show them) and the
    contributions at every checkpoint (``"xfeature-contributions"``, for
    ``run.explain(concepts="xfeatures")``), and records ``xfeatures/r2_<class>`` and
    ``xfeatures/n_x_<class>``. It needs the probe images in the run (the default for probes up to
    64 MiB); the model is left as it was.

    Cost: one probe pass for the features, one small GradCAM pass per x-feature, and per class
    one SRAE fit per n_x tried (the SRAE is an MLP on N x d features: seconds on a CPU).
    """

    name: str = "xfeatures"
    when: str = "end"
    classes: tuple[int, ...] | None = None
    n_x: int | None = None
    max_n_x: int = 5
    top_k: int = 4
    options: SRAEOptions = SRAEOptions()

    def __post_init__(self):
        if self.name != "xfeatures":
            fail(self, "name", "'xfeatures' (the views and run.explain read that attachment)", self.name)
        if self.when != "end":
            fail(self, "when", "'end' (x-features explain the final model)", self.when)
        if self.classes is not None:
            classes = (self.classes,) if isinstance(self.classes, int) else self.classes
            if not isinstance(classes, (list, tuple)) or not classes:
                fail(self, "classes", "a non-empty list of class indices, or None", self.classes)
            set_field(self, "classes", tuple(classes))
        field_int(self, "n_x", optional=True)
        field_int(self, "max_n_x")
        field_int(self, "top_k")
        if not isinstance(self.options, SRAEOptions):
            fail(self, "options", "an lightning_i2x.xfeatures.SRAEOptions", self.options)

    def __call__(self, model, run, evidence, explanation, *, forward_fn: ForwardFn | None = None) -> None:
        if run.images is None:
            raise ValueError(f"XFeatureMeasure needs the probe images in the run, and {run.path} holds none: keep "
                             "ProbePassOptions.store_images=True (the default; probes up to 64 MiB)")
        classes = list(self.classes) if self.classes is not None else list(range(run.num_classes))
        explainer = XFeatureExplainer(classes, n_x=self.n_x, max_n_x=self.max_n_x, options=self.options, top_k=self.top_k)
        target = run.config.target_layer if run.config is not None else None
        images = torch.from_numpy(np.asarray(run.images, dtype=np.float32))
        explainer.fit(model, images, target_layer=target, forward_fn=forward_fn, class_names=run.class_names)
        store_xfeatures(run, explainer)
        metrics = {}
        for c in classes:
            r = explainer[c]
            metrics[f"{self.name}/n_x_{c}"] = float(r.n_x)
            if np.isfinite(r.r2):
                metrics[f"{self.name}/r2_{c}"] = float(r.r2)
        run.record_metrics(metrics)
