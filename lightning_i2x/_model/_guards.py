"""Context managers that keep the explainer's work invisible to the training run."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

__all__ = ["preserved_rng", "preserved_training_state", "evaluation_mode"]


@contextlib.contextmanager
def preserved_rng():
    """Restore the torch (CPU and CUDA), NumPy and Python RNG states on exit, so the explainer
    consumes no random draws that training would have used."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def preserved_training_state(model: torch.nn.Module):
    """Restore every submodule's train/eval mode, every parameter's ``.grad`` and
    ``requires_grad`` on exit: for third-party CAM code that calls ``model.eval()`` and
    ``model.zero_grad()`` and runs ``backward()``."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module):
    """Run in eval mode (no BatchNorm statistics updates, no dropout draws) and put back every
    submodule's own mode after; free when the model is already in eval mode, as in validation."""
    modes = [(m, m.training) for m in model.modules() if m.training]
    if modes:
        model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
