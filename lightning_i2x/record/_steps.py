"""One record's analysis and the end of a fit, each step isolated: what ``I2XCallback`` runs after
a probe pass (on the training thread or in the background worker) and at ``on_fit_end``.

``attempt(where, fn, *args, **kw)`` is the caller's failure isolation: it returns ``fn``'s result,
or None when ``fn`` failed (after warning, recording or raising, as the caller chooses), so a
failing step never costs the steps before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._model import ForwardFn
from ..analysis import Explanation
from ..measures import Measure
from ..store import I2XRun
from ._pipeline import ProbeEvidence, Recorder

__all__ = ["Attempt", "analyse_record", "finish_fit"]

Attempt = Callable[..., Any]


def analyse_record(recorder: Recorder, run: I2XRun, evidence: ProbeEvidence, *, epoch: int, global_step: int, attempt: Attempt,
                   model: torch.nn.Module | None = None, measures: Sequence[Measure] = (),
                   forward_fn: ForwardFn | None = None) -> Explanation | None:
    """Append the evidence as a checkpoint and refit the prototypes, explain the run, then run the
    record-time measures (only with ``model``: the background worker has none). Returns the new
    explanation, or None when appending or explaining failed."""
    if attempt("record", recorder.append, run, evidence, epoch=epoch, global_step=global_step) is None:
        return None
    explanation = attempt("explain", recorder.explain_run, run)
    if explanation is not None and model is not None:
        for m in measures:
            if m.when == "record":
                attempt(f"measure {m.name}", m, model, run, evidence, explanation, forward_fn=forward_fn)
    return explanation


def finish_fit(recorder: Recorder, run: I2XRun, explanation: Explanation, *, model: torch.nn.Module, measures: Sequence[Measure],
               attempt: Attempt, forward_fn: ForwardFn | None = None) -> Explanation | None:
    """The end-of-fit measures, on the last record's float32 maps and confidences (those the record
    itself analysed; after a resume without a new record, the stored float16 copies), then the
    explanation rebuilt, since what they stored (a reliance: the suspects) belongs in it. Returns
    that explanation, or None when no end-of-fit measure is configured or it could not be rebuilt."""
    end = [m for m in measures if m.when == "end"]
    if not end or run.num_checkpoints == 0:
        return None
    latest = recorder.latest
    if latest is None:
        latest = ProbeEvidence(None, torch.from_numpy(run.cams()[-1].astype("float32")),
                               torch.from_numpy(run.latest_confidences().astype("float32")), None)
    for m in end:
        attempt(f"measure {m.name}", m, model, run, latest, explanation, forward_fn=forward_fn)
    return attempt("explain", recorder.explain_run, run)
