"""TensorBoard's entry point for the I2X dashboard tab (``tensorboard_plugins`` entry point).

This module imports only the standard library and TensorBoard's plugin base: lightning_i2x (and
with it torch and lightning) is imported inside ``load()``, and any failure there is logged and
leaves TensorBoard running without the tab. The tab is tested with TensorBoard 2.21, the oldest
release it supports; under an older one the loader says so and TensorBoard starts without it.
"""

from __future__ import annotations

import logging

from tensorboard.plugins import base_plugin

__all__ = ["I2XDashboardLoader", "OLDEST_TENSORBOARD"]

logger = logging.getLogger(__name__)

OLDEST_TENSORBOARD = (2, 21)  # the oldest release the tab is tested with


def _release(version: str) -> tuple[int, ...]:
    """``"2.21.0"`` -> ``(2, 21, 0)``; a pre-release suffix (``"2.22.0a1"``) ends the number."""
    parts: list[int] = []
    for piece in version.split("."):
        n = len(piece) - len(piece.lstrip("0123456789"))
        if n == 0:
            break
        parts.append(int(piece[:n]))
        if n < len(piece):
            break
    return tuple(parts)


class I2XDashboardLoader(base_plugin.TBLoader):
    """Loads the I2X dashboard plugin lazily; returns None (no tab) when it cannot load."""

    def load(self, context):
        from tensorboard import version

        if _release(version.VERSION) < OLDEST_TENSORBOARD:
            logger.warning("the I2X dashboard tab is disabled: it needs TensorBoard >= %s (the oldest tested), this is %s; "
                           "`i2x serve LOG_DIR` shows the same dashboard", ".".join(map(str, OLDEST_TENSORBOARD)), version.VERSION)
            return None
        try:
            from lightning_i2x.dashboard import tensorboard_plugin

            return tensorboard_plugin()(context)
        except Exception as e:  # a failure of ours must not stop TensorBoard
            logger.warning("the I2X dashboard tab is disabled: %s: %s", type(e).__name__, e)
            return None
