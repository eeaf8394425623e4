"""``TwinMeasure``: the causal twin surrogate (``lightning_i2x.twin.fit_twin``) at the end of fit,
and reading what it stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._core import check_choice, fail, field_int
from .._model import ForwardFn
from ..errors import I2XRunError
from ..twin import SurrogateLosses, TwinResult, fit_twin, morpho_measures

__all__ = ["TwinMeasure", "stored_twin"]


def stored_twin(run, name: str = "twin") -> TwinResult | None:
    """The ``TwinResult`` a ``TwinMeasure`` named ``name`` stored in ``run`` (None when there is
    none). Raises ``I2XRunError`` when the attachment is damaged."""
    found = run.attachment(name)
    if found is None:
        return None
    try:
        return TwinResult.from_dict(found[0])
    except (KeyError, TypeError, ValueError) as e:
        raise I2XRunError(f"{run.path}: the {name!r} attachment does not hold a twin result ({type(e).__name__}: {e})") from None


@dataclass(frozen=True, eq=False)
class TwinMeasure:
    """The GLANCE-inspired twin surrogate as a measure of ``I2XCallback(measures=[...])``, once at
    the end of fit (``when="end"``). Off by default.

    It fits ``fit_twin`` on ``data`` (an image tensor or a Dataset of (image, label); None: the
    run's probe images, which need ``ProbePassOptions.store_images``), records
    ``<name>/fidelity``, ``<name>/reconstruction_fidelity`` and ``<name>/alignment_r2/<concept>``
    (logged as ``i2x/twin/...``), and stores the whole result as the attachment ``<name>``
    (``stored_twin(run)`` reads it back; the views draw its graph, effects and counterfactual
    strips as ``i2x/twin/graph``, ``i2x/twin/effects``, ``i2x/twin/counterfactuals``, the report
    and the dashboard show them). ``fit`` holds further ``fit_twin`` keywords."""

    name: str = "twin"
    when: str = "end"
    data: Any = None
    concepts: tuple[str, ...] = ("thickness", "slant")
    context: Any = morpho_measures
    target: int | None = None
    latent_dim: int = 6
    epochs: int = 15
    losses: SurrogateLosses = SurrogateLosses()
    fit: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or not all(ch.isalnum() or ch in "-_" for ch in self.name):
            fail(self, "name", "a non-empty name of letters, digits, '-' and '_'", self.name)
        check_choice(self, "when", self.when, ("record", "end"))
        if not callable(self.context):
            fail(self, "context", "a function images -> {name: values}", self.context)
        field_int(self, "latent_dim")
        field_int(self, "epochs")
        if not isinstance(self.fit, dict):
            fail(self, "fit", "a dict of further fit_twin keywords", self.fit)

    def __call__(self, model, run, evidence, explanation, *, forward_fn: ForwardFn | None = None) -> None:
        data = self.data
        if data is None:
            if run.images is None:
                raise ValueError(f"TwinMeasure needs images: give data=, or keep the probe images in the run ({run.path} holds "
                                 "none; ProbePassOptions.store_images=True, the default, for probes up to 64 MiB)")
            data = run.images
        result = fit_twin(model, data, concepts=self.concepts, context=self.context, target=self.target,
                          latent_dim=self.latent_dim, epochs=self.epochs, losses=self.losses, forward_fn=forward_fn, **self.fit)
        metrics = {f"{self.name}/fidelity": result.fidelity, f"{self.name}/reconstruction_fidelity": result.reconstruction_fidelity}
        metrics |= {f"{self.name}/alignment_r2/{c}": v for c, v in result.alignment_r2.items() if v == v}
        run.record_metrics(metrics)
        run.save_attachment(self.name, data=result.to_dict())
