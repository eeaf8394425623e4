"""Failure isolation for the callback: an explainer failure is warned about once per kind and
recorded in the run while training goes on (``on_error="warn"``), or stops it (``"raise"``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import lightning.pytorch as pl

from ..record import AnalysisWorker

__all__ = ["At", "Isolation"]


class At(NamedTuple):
    """Where a piece of explainer work belongs: its epoch, step and (under DDP) rank."""

    epoch: int
    step: int
    rank: str

    @classmethod
    def of(cls, trainer: pl.Trainer) -> At:
        return cls(trainer.current_epoch, trainer.global_step, f" on rank {trainer.global_rank}" if trainer.world_size > 1 else "")


class Isolation:
    """``report`` a failure, or run a step ``guarded`` so that its failure gives None."""

    def __init__(self, on_error: str, owner: Any):
        self.on_error = on_error
        self._owner = owner  # its ``run`` (or None) is where failures are recorded
        self._warned: set[tuple[str, str]] = set()

    def report(self, where: str, e: Exception, at: At) -> None:
        if self.on_error == "raise":
            raise e
        if (where, type(e).__name__) not in self._warned:
            self._warned.add((where, type(e).__name__))
            warnings.warn(f"I2XCallback: {where} failed{at.rank} at epoch {at.epoch}, step {at.step}: {type(e).__name__}: {e}. "
                          "Training goes on and the run records the failure; pass on_error='raise' to stop instead.",
                          RuntimeWarning, stacklevel=4)
        run = self._owner.run
        if run is not None:
            try:
                run.record_error(where, e, epoch=at.epoch, global_step=at.step)
            except Exception:
                pass  # the run directory itself may be what failed

    def report_worker(self, worker: AnalysisWorker, at: At) -> None:
        """What the background worker finished with: a job that broke itself (not expected: each
        record's analysis isolates its steps) is reported at ``at``, what a record's analysis
        isolated (its ``(where, error, at)`` list) at the record it belongs to."""
        for where, e in worker.failures():
            self.report(where, e, at)
        for _, failures in worker.results():
            for where, e, record_at in failures or []:
                self.report(where, e, record_at)

    def guarded(self, where: str, at: At, fn: Callable, *args, **kw) -> Any:
        try:
            return fn(*args, **kw)
        except Exception as e:
            self.report(where, e, at)
            return None

    def collecting(self, at: At, failures: list | None) -> Callable:
        """An ``attempt(where, fn, ...)`` for the record pipeline: reports at once when ``failures``
        is None, else appends ``(where, error, at)`` to it (the background worker's way)."""

        def attempt(where: str, fn: Callable, *args, **kw) -> Any:
            try:
                return fn(*args, **kw)
            except Exception as e:
                self.report(where, e, at) if failures is None else failures.append((where, e, at))
                return None

        return attempt
