"""Where the views go: every Lightning logger of the trainer, each as far as it can take them.

| logger | scalars | text (markdown) | images |
|---|---|---|---|
| ``TensorBoardLogger`` | ``log_metrics`` | ``add_text`` | ``add_image`` (+ the custom-scalars layout) |
| ``CSVLogger`` | ``log_metrics`` (``metrics.csv``) | - | - |
| ``MLFlowLogger`` | ``log_metrics`` | ``log_text`` artifact ``i2x/<tag>/step-<step>.md`` | ``log_image`` artifact ``.png`` |
| ``WandbLogger`` (and any logger with ``log_image``/``log_text``) | ``log_metrics`` | ``log_text`` (a one-cell table) | ``log_image`` |

A raw ``SummaryWriter`` (torch.utils.tensorboard or tensorboardX) is taken as well, for scripts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["LogSink", "DeferredSink"]


class _Writer:
    """A SummaryWriter-like target (``add_scalar``/``add_text``/``add_image``)."""

    def __init__(self, writer: Any):
        self.writer = writer

    takes_images = True

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def layout(self, layout: dict) -> None:
        if hasattr(self.writer, "add_custom_scalars"):
            self.writer.add_custom_scalars(layout)

    def flush(self) -> None:
        if hasattr(self.writer, "flush"):
            self.writer.flush()


class _Logger:
    """A Lightning logger: scalars through ``log_metrics``, text and images where it has a way."""

    def __init__(self, logger: Any):
        from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

        self.logger = logger
        self.tensorboard = logger.experiment if isinstance(logger, TensorBoardLogger) else None
        self.mlflow = isinstance(logger, MLFlowLogger)
        self.takes_images = self.tensorboard is not None or self.mlflow or callable(getattr(logger, "log_image", None))

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.logger.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_text(tag, text, step)
        elif self.mlflow:
            self.logger.experiment.log_text(self.logger.run_id, text, f"{tag}/step-{step:08d}.md")
        elif callable(getattr(self.logger, "log_text", None)):
            self.logger.log_text(key=tag, columns=["markdown"], data=[[text]], step=step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_image(tag, rgb, step, dataformats="HWC")
        elif self.mlflow:
            self.logger.experiment.log_image(self.logger.run_id, rgb, f"{tag}/step-{step:08d}.png")
        elif callable(getattr(self.logger, "log_image", None)):
            self.logger.log_image(key=tag, images=[rgb], step=step)

    def layout(self, layout: dict) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_custom_scalars(layout)

    def flush(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()


class LogSink:
    """Fan the i2x views out to several loggers (or SummaryWriters) at once.

    Example::

        >>> class Memory:  # any SummaryWriter-like object
        ...     def __init__(self): self.seen = []
        ...     def add_scalar(self, tag, value, step): self.seen.append((tag, value, step))
        ...     def add_text(self, tag, text, step): self.seen.append((tag, text, step))
        ...     def add_image(self, tag, image, step, dataformats): self.seen.append((tag, image.shape, step))
        >>> memory = Memory()
        >>> LogSink([memory]).scalars({"i2x/uncertain_prototypes": 3}, step=7)
        >>> memory.seen
        [('i2x/uncertain_prototypes', 3, 7)]
    """

    def __init__(self, targets: Iterable[Any]):
        from lightning.pytorch.loggers import Logger

        self.targets = [(_Logger(t) if isinstance(t, Logger) else _Writer(t)) for t in targets]

    @classmethod
    def of(cls, target: Any) -> LogSink:
        """A sink from a sink, one logger or writer, or a sequence of them."""
        if isinstance(target, LogSink):
            return target
        if isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
            return cls(target)
        return cls([target])

    def __bool__(self) -> bool:
        return bool(self.targets)

    @property
    def takes_images(self) -> bool:
        """Whether any target can show images (drawing is skipped otherwise)."""
        return any(t.takes_images for t in self.targets)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if values:
            for t in self.targets:
                t.scalars(values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        for t in self.targets:
            t.text(tag, text, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        for t in self.targets:
            if t.takes_images:
                t.image(tag, rgb, step)

    def layout(self, layout: dict) -> None:
        for t in self.targets:
            t.layout(layout)

    def flush(self) -> None:
        for t in self.targets:
            t.flush()

    def group(self) -> None:
        """Close a step: the calls since the last one belong together (nothing to do for a live
        sink; a ``DeferredSink`` replays them as one isolated step)."""


class DeferredSink(LogSink):
    """The background analysis's sink: it keeps each call, and ``replay`` hands them to ``sink`` on
    the thread that calls it (the training thread). Lightning's loggers are not thread-safe: a
    worker's ``log_metrics`` raced the Trainer's ``CSVLogger.save`` ("dict contains fields not in
    fieldnames"). The drawing stays in the background; only the logger calls move. Calls are
    replayed in the steps ``group`` closes, each isolated as it was when it ran live; ``at`` is
    the record they belong to."""

    def __init__(self, sink: LogSink, at: Any = None):  # not super().__init__: that would wrap the targets again
        self.sink, self.targets, self.at = sink, sink.targets, at
        self._groups: list[list] = [[]]
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.sink)

    @property
    def takes_images(self) -> bool:
        return self.sink.takes_images

    def group(self) -> None:
        with self._lock:
            self._groups.append([])

    def _keep(self, name: str, *args: Any) -> None:
        with self._lock:
            self._groups[-1].append((name, args))

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._keep("scalars", dict(values), step)

    def text(self, tag: str, text: str, step: int) -> None:
        self._keep("text", tag, text, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self._keep("image", tag, rgb, step)

    def layout(self, layout: dict) -> None:
        self._keep("layout", layout)

    def flush(self) -> None:
        self._keep("flush")

    def replay(self, report: Callable[[Exception], None]) -> int:
        """Hand the calls of every closed step to the real sink, in order; a step that raises is
        given to ``report`` and the next goes on. Returns how many calls were handed over."""
        with self._lock:
            closed, self._groups = self._groups[:-1], self._groups[-1:]
        for calls in closed:
            try:
                for name, args in calls:
                    getattr(self.sink, name)(*args)
            except Exception as e:
                report(e)
        return sum(len(calls) for calls in closed)
