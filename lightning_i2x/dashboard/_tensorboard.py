"""The dashboard as a TensorBoard tab (a dynamic plugin, loaded by ``lightning_i2x_tensorboard``).

It finds the runs beside the event files under the log directory TensorBoard was started with
(``context.logdir``; with a data provider only, ``data_provider``'s log directory when it has one)
and serves the same application as ``i2x serve`` under ``data/plugin/i2x/``. TensorBoard's frame
loads ``index.js``, which opens the page in a frame of its own (its own CSP, relative URLs).
"""

from __future__ import annotations

from pathlib import Path

from tensorboard.plugins import base_plugin

from ._app import DashboardApp
from ._runs import find_runs

__all__ = ["I2XDashboardPlugin", "PLUGIN_NAME"]

PLUGIN_NAME = "i2x"


def _logdir(context) -> str | None:
    if getattr(context, "logdir", None):
        return context.logdir
    provider = getattr(context, "data_provider", None)
    for attr in ("logdir", "_logdir"):
        if isinstance(getattr(provider, attr, None), str):
            return getattr(provider, attr)
    return None


class I2XDashboardPlugin(base_plugin.TBPlugin):
    """The I2X dashboard tab; active when the log directory holds at least one I2X run."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context):
        self._logdir = _logdir(context)
        self._app = None if self._logdir is None else DashboardApp(self._logdir)

    def get_plugin_apps(self):
        if self._app is None:
            return {}
        return {"/*": self._serve}

    def _serve(self, environ, start_response):
        """TensorBoard hands over the whole path: the plugin's prefix moves to SCRIPT_NAME."""
        prefix = f"/data/plugin/{PLUGIN_NAME}"
        path = environ.get("PATH_INFO", "")
        if path.startswith(prefix):
            environ = {**environ, "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + prefix, "PATH_INFO": path[len(prefix):] or "/"}
        return self._app(environ, start_response)

    def is_active(self) -> bool:
        return self._logdir is not None and bool(find_runs(Path(self._logdir)))

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="I2X", disable_reload=True)
