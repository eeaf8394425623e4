"""Further measures that need the model, run by the callback after a record or at the end of fit.

A measure is a small object with a ``name``, ``when`` it runs (``"record"``: after every record;
``"end"``: once, at the end of fit) and a ``__call__(model, run, evidence, explanation,
forward_fn=None)`` that stores what it found in the run. ``evidence`` is the record's
``ProbeEvidence`` (maps, confidences, and the probe's ``images`` and ``labels`` on the CPU); at
the end of fit, the latest checkpoint's maps and confidences with the probe (no features). It
stores scalars with ``run.record_metrics`` (the callback logs every metric of the latest
checkpoint to the loggers as ``i2x/<metric>``) and larger results with ``run.save_attachment``. The callback runs each one guarded: a failing measure is
warned about and recorded, training goes on. The measures shipped: ``lightning_i2x.faithfulness``
(deletion/insertion), ``lightning_i2x.sag`` (minimal sufficient explanations) and
``lightning_i2x.reliance`` (how much the model relies on each prototype).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["Measure", "check_measures"]

When = Literal["record", "end"]


@runtime_checkable
class Measure(Protocol):
    name: str
    when: When

    def __call__(self, model: Any, run: Any, evidence: Any, explanation: Any, *, forward_fn: Any = None) -> None: ...


def check_measures(measures: Any) -> tuple[Measure, ...]:
    """The measures as a tuple; raises TypeError / ValueError naming a bad one."""
    if measures is None:
        return ()
    if not isinstance(measures, (list, tuple)):
        raise TypeError(f"I2XCallback.measures must be a list of measures, got {type(measures).__name__}")
    names = set()
    for m in measures:
        if not isinstance(m, Measure):
            raise TypeError(f"I2XCallback.measures: {m!r} is not a measure (it needs name, when and __call__)")
        if m.when not in ("record", "end"):
            raise ValueError(f"{type(m).__name__}.when must be one of ('record', 'end'), got {m.when!r}")
        if m.name in names:
            raise ValueError(f"I2XCallback.measures: two measures are named {m.name!r}")
        names.add(m.name)
    return tuple(measures)
