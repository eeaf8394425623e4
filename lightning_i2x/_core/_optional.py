"""The heavy or optional dependencies, checked in one place and imported only where used.

``import lightning_i2x`` loads neither pytorch-grad-cam (and its cv2) nor matplotlib: the native
GradCAM path and a fit with ``views=False`` never need them (a test in a fresh process keeps it so).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

_INSTALL = {
    "pytorch_grad_cam": ("pytorch-grad-cam's saliency methods", "pip install grad-cam"),
    "matplotlib": ("the figures", "pip install matplotlib"),
    "markdown": ("the HTML report", "pip install markdown"),
    "skimage": ("the Morpho-MNIST measures (lightning_i2x.twin)", "pip install 'lightning-i2x[morpho]' (scikit-image)"),
}


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` now; an ImportError saying what needs it and how to install it when absent."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        what, how = _INSTALL.get(module.split(".")[0], (purpose or module, f"pip install {module.split('.')[0]}"))
        raise ImportError(f"{purpose or what} need(s) {module.split('.')[0]}, which cannot be imported ({e}): {how}") from e

