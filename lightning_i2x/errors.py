"""The errors the package raises on its own account (a leaf: every layer may raise them)."""

from __future__ import annotations

__all__ = ["I2XRunError", "OptionsError"]


class I2XRunError(ValueError):
    """A run directory that cannot be read, or that lacks what was asked of it (no record yet, no
    stored probe images, no reliance of its current prototypes)."""


class OptionsError(ValueError):
    """A stored configuration that is missing values or has unknown ones."""
