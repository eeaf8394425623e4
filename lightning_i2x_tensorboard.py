"""TensorBoard's entry point for the I2X dashboard tab (``tensorboard_plugins`` entry point).

This module imports only the standard library and TensorBoard's plugin base: lightning_i2x (and
with it torch and lightning) is imported inside ``load()``, and any failure there is logged and
leaves TensorBoard running without the tab.
"""

from __future__ import annotations

import logging

from tensorboard.plugins import base_plugin

__all__ = ["I2XDashboardLoader"]

logger = logging.getLogger(__name__)


class I2XDashboardLoader(base_plugin.TBLoader):
    """Loads the I2X dashboard plugin lazily; returns None (no tab) when it cannot load."""

    def load(self, context):
        try:
            from lightning_i2x.dashboard import tensorboard_plugin

            return tensorboard_plugin()(context)
        except Exception as e:  # a failure of ours must not stop TensorBoard
            logger.warning("the I2X dashboard tab is disabled: %s: %s", type(e).__name__, e)
            return None
