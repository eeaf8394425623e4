"""The background worker that runs each record's analysis in order, off the training thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["AnalysisWorker"]


class AnalysisWorker:
    """One background thread that runs the analysis of each record in order, so the training thread
    pays for the probe pass alone. Failures are kept, not raised: ``failures()`` hands them to the
    caller's isolation at its next hook. ``join()`` waits for everything submitted (before a
    checkpoint is saved, at the end of fit, at teardown).

    Example::

        >>> worker = AnalysisWorker()
        >>> worker.submit("double", lambda: 2 * 21)
        >>> worker.join()
        >>> worker.results(), worker.failures()
        ([('double', 42)], [])
        >>> worker.close()
    """

    def __init__(self):
        import concurrent.futures

        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="i2x-analysis")
        self._pending: list[tuple[str, Any]] = []
        self._done: list[tuple[str, Any]] = []
        self._failed: list[tuple[str, BaseException]] = []

    def submit(self, where: str, fn: Callable, *args: Any) -> None:
        self._pending.append((where, self._pool.submit(fn, *args)))

    def join(self) -> None:
        for where, future in self._pending:
            try:
                self._done.append((where, future.result()))
            except Exception as e:  # isolated by the caller through failures()
                self._failed.append((where, e))
        self._pending.clear()

    def results(self) -> list[tuple[str, Any]]:
        out, self._done = self._done, []
        return out

    def failures(self) -> list[tuple[str, BaseException]]:
        """The failures of finished work since the last call (work still running is not waited for)."""
        still = []
        for where, future in self._pending:
            if future.done():
                try:
                    self._done.append((where, future.result()))
                except Exception as e:
                    self._failed.append((where, e))
            else:
                still.append((where, future))
        self._pending = still
        out, self._failed = self._failed, []
        return out

    @property
    def busy(self) -> bool:
        return any(not f.done() for _, f in self._pending)

    def close(self) -> None:
        self.join()
        self._pool.shutdown(wait=True)
