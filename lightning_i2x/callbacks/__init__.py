"""The Lightning callbacks: ``I2XCallback``, glue around the record pipeline."""

from ._i2x import I2XCallback

__all__ = ["I2XCallback"]
