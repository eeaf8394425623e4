"""``SAGMeasure``: SAG inside ``I2XCallback(measures=[...])``, and reading what it stored."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..._core import fail, field_choice, field_fraction, field_int, field_number, set_field
from ..._model import ForwardFn
from ...analysis import select_classes
from ...errors import I2XRunError
from ...options import ViewOptions
from ._graph import SAG
from ._mses import mse_list_stats, mses_many, sag
from ._regions import (
    DEFAULT_BEAM_WIDTH,
    DEFAULT_FLOOR,
    DEFAULT_FRACTION,
    DEFAULT_MAX_CHILDREN,
    DEFAULT_MAX_MSES,
    DEFAULT_MAX_NODES,
    DEFAULT_MAX_OVERLAP,
    DEFAULT_MAX_ROOTS,
    DEFAULT_SIZE_SLACK,
    region_map,
)

__all__ = ["StoredSAG", "stored_sags", "SAGMeasure"]

@dataclass(frozen=True)
class StoredSAG:
    """One SAG a ``SAGMeasure`` stored: its class, the probe image it explains (index into the
    run's probe set), the graph, and the checkpoint it was measured at."""

    cls: int
    image: int
    sag: SAG
    checkpoint: int


def stored_sags(run, name: str = "sag") -> list[StoredSAG]:
    """The SAGs a ``SAGMeasure`` named ``name`` stored in ``run`` (empty when there are none).
    Raises ``I2XRunError`` when the attachment is damaged."""
    found = run.attachment(name)
    if found is None:
        return []
    data, checkpoint = found
    try:
        return [StoredSAG(int(e["class"]), int(e["image"]), SAG.from_dict(e["sag"]), checkpoint) for e in data["sags"]]
    except (KeyError, TypeError, ValueError) as e:
        raise I2XRunError(f"{run.path}: the {name!r} attachment does not hold SAGs ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class SAGMeasure:
    """Minimal sufficient explanations while training, as a measure of ``I2XCallback(measures=[...])``
    (``lightning_i2x.measures``). Off by default: add ``SAGMeasure()`` to ``measures`` to run it.

    At each record (``when="record"``; ``"end"``: once, after fit) it takes, for each drawn class
    (``classes``; None: the classes the views draw, ``analysis.select_classes`` with ``views``,
    which ``I2XCallback`` sets to its own ``ViewOptions``, so classes pinned there are measured), the ``images_per_class`` probe images of that class the latest checkpoint
    classifies correctly with the highest confidence, and

    - records ``<name>/multi_mse_share`` (share of those images with two or more disjoint MSEs) and
      ``<name>/mean_mse_size`` (mean regions per MSE), logged as ``i2x/sag/...``;
    - stores the full SAG of the most confident image of each class as the attachment ``<name>``
      (``stored_sags(run)`` reads them back; the views draw them as ``i2x/class<n>/sag``, the
      report lists their MSEs).

    ``regions``: ``"prototypes"`` (each image's prototype assignment, so an MSE reads
    "P-3 + P-17") or ``"grid"``. The search options are ``sag()``'s. It needs the probe images in
    the run (``ProbePassOptions.store_images``, the default, for probes up to 64 MiB); it leaves
    the model's modes, gradients and the RNGs as they were.

    Cost: forward passes only, about ``evaluations`` masked copies per image (a few hundred on a
    7 x 7 prototype map; ``benchmarks/sag.py`` measures it) for ``images_per_class`` x classes
    images, plus each stored SAG's graph. With the defaults (3 classes, 4 images each) on the demo
    CNN that is about 3.6 probe passes of a 1000-image probe per record (13 s against 3.6 s on a
    loaded 2-core CPU; ``benchmarks/results/sag-cpu.md``).
    """

    name: str = "sag"
    when: str = "record"
    classes: tuple[int | str, ...] | None = None
    images_per_class: int = 4
    regions: str = "prototypes"
    fraction: float = DEFAULT_FRACTION
    beam_width: int = DEFAULT_BEAM_WIDTH
    max_size: int | None = None
    size_slack: int | None = DEFAULT_SIZE_SLACK
    max_roots: int = DEFAULT_MAX_ROOTS
    max_overlap: int = DEFAULT_MAX_OVERLAP
    max_mses: int = DEFAULT_MAX_MSES
    floor: float = DEFAULT_FLOOR
    max_children: int | None = DEFAULT_MAX_CHILDREN
    max_nodes: int = DEFAULT_MAX_NODES
    grid_size: int | None = None
    sigma: float | None = None
    batch_size: int = 256
    views: ViewOptions | None = None

    def with_views(self, views: ViewOptions) -> SAGMeasure:
        """This measure choosing its classes as ``views`` does (kept when ``views`` was given)."""
        return self if self.views is not None else dataclasses.replace(self, views=views)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or not all(ch.isalnum() or ch in "-_" for ch in self.name):
            fail(self, "name", "a non-empty name of letters, digits, '-' and '_'", self.name)
        field_choice(self, "when", ("record", "end"))
        if self.classes is not None:
            classes = (self.classes,) if isinstance(self.classes, (str, int)) else self.classes
            if (not isinstance(classes, (list, tuple)) or not classes
                    or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes)):
                fail(self, "classes", "a non-empty list of class indices or names, or None", self.classes)
            set_field(self, "classes", tuple(classes))
        field_int(self, "images_per_class")
        field_choice(self, "regions", ("prototypes", "grid"))
        field_fraction(self, "fraction")
        field_int(self, "beam_width")
        field_int(self, "max_size", optional=True)
        field_int(self, "size_slack", low=0, optional=True)
        field_int(self, "max_roots")
        field_int(self, "max_overlap", low=0)
        field_int(self, "max_mses")
        field_fraction(self, "floor", closed_low=True)
        field_int(self, "max_children", optional=True)
        field_int(self, "max_nodes")
        field_int(self, "grid_size", optional=True)
        field_number(self, "sigma", strict=True, optional=True)
        field_int(self, "batch_size")
        if self.views is not None and not isinstance(self.views, ViewOptions):
            fail(self, "views", "a lightning_i2x.ViewOptions or None", self.views)

    def _search(self) -> dict[str, Any]:
        return dict(fraction=self.fraction, beam_width=self.beam_width, max_size=self.max_size, max_roots=self.max_roots,
                    size_slack=self.size_slack, sigma=self.sigma, batch_size=self.batch_size)

    def select_images(self, run, explanation) -> dict[int, list[int]]:
        """{class: probe indices}, most confident first: the images measured for each drawn class
        (correctly classified at the latest checkpoint; a class without one is left out)."""
        if self.classes is not None:
            classes = [explanation.class_index(c) for c in self.classes]
        else:
            views = self.views or ViewOptions()
            classes = select_classes(explanation, run.latest_confidences(), classes=views.classes,
                                     max_classes=views.max_classes, max_pairs=views.max_pairs)
        conf = run.latest_confidences()
        pred = conf.argmax(axis=1)
        out = {}
        for c in classes:
            members = np.flatnonzero((run.labels == c) & (pred == c))
            if members.size:
                order = np.argsort(-conf[members, c], kind="stable")
                out[int(c)] = [int(i) for i in members[order[: self.images_per_class]]]
        return out

    def __call__(self, model, run, evidence, explanation, *, forward_fn: ForwardFn | None = None) -> None:
        if run.images is None:
            raise ValueError(f"SAGMeasure needs the probe images in the run, and {run.path} holds none: keep "
                             "ProbePassOptions.store_images=True (the default; probes up to 64 MiB)")
        chosen = self.select_images(run, explanation)
        images = torch.from_numpy(np.asarray(run.images, dtype=np.float32))
        assignment = run.assignment() if self.regions == "prototypes" else None

        def regions_of(i):
            return "grid" if assignment is None else assignment[i]

        mse_lists, sags = [], []
        for c, idx in chosen.items():  # the representative: its full graph (its search gives its MSEs too)
            g = sag(model, images[idx[0]], c, regions_of(idx[0]), max_overlap=self.max_overlap, max_mses=self.max_mses,
                    floor=self.floor, max_children=self.max_children, max_nodes=self.max_nodes, grid_size=self.grid_size,
                    forward_fn=forward_fn, **self._search())
            sags.append({"class": c, "image": idx[0], "sag": g.to_dict()})
            mse_lists.append(list(g.all_mses))
        rest = [(c, i) for c, idx in chosen.items() for i in idx[1:]]
        if rest:
            size = tuple(images.shape[-2:])
            maps = [region_map(regions_of(i), size, self.grid_size)[0] for _, i in rest]
            results, _, _ = mses_many(model, images[[i for _, i in rest]], torch.as_tensor([c for c, _ in rest]), maps,
                                       self.fraction, self.beam_width, self.max_size, self.max_roots, self.size_slack,
                                       self.sigma, self.batch_size, forward_fn)
            mse_lists += [[m for m, _ in r.mses] for r in results]
        stats = mse_list_stats(mse_lists)
        metrics = {f"{self.name}/{k}": stats[k] for k in ("multi_mse_share", "mean_mse_size") if math.isfinite(stats[k])}
        if metrics:
            run.record_metrics(metrics)
        run.save_attachment(self.name, data={"regions": self.regions, "sags": sags})


