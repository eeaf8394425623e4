"""What the fine-tuning measures on the validation set: the model's predictions, and the accuracy
and confusion counts from torchmetrics (one definition, shared with the rest of Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

from .._model import ForwardFn, default_forward, evaluation_mode, preserved_rng, split_batch
from ..analysis import Pair

__all__ = ["predictions", "accuracy", "confusion_matrix", "pair_confusions"]


def predictions(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                forward_fn: ForwardFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted classes) of the model on the loader: eval mode, no grad, RNG untouched."""
    forward = forward_fn or default_forward
    model.to(device)
    labels, preds = [], []
    with preserved_rng(), evaluation_mode(model), torch.no_grad():
        for batch in loader:
            x, y = split_batch(batch, "the validation DataLoader")
            preds.append(forward(model, x.to(device)).argmax(dim=1).cpu().numpy())
            labels.append(y.numpy())
    if not labels:
        raise ValueError("the validation DataLoader is empty")
    return np.concatenate(labels).astype(np.int64), np.concatenate(preds).astype(np.int64)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, m: int) -> np.ndarray:
    """(M, M) counts, rows the true class (labels outside [0, M) are ignored)."""
    y, p = torch.as_tensor(labels), torch.as_tensor(preds)
    ok = (y >= 0) & (y < m) & (p >= 0) & (p < m)
    return multiclass_confusion_matrix(p[ok], y[ok], num_classes=m).numpy().astype(np.int64)


def accuracy(labels: np.ndarray, preds: np.ndarray, m: int) -> float:
    return float(multiclass_accuracy(torch.as_tensor(preds), torch.as_tensor(labels), num_classes=m, average="micro"))


def pair_confusions(cm: np.ndarray, pairs: Sequence[Pair]) -> dict[Pair, tuple[int, int]]:
    """{(a, b): (a predicted as b, b predicted as a)}."""
    return {(a, b): (int(cm[a, b]), int(cm[b, a])) for a, b in pairs}
