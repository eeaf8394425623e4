"""The interactive dashboard: one small web application over the run directories, with three
doors: ``i2x serve DIR`` (a local server), a TensorBoard tab (``lightning_i2x_tensorboard``, a
dynamic plugin) and ``i2x report --interactive`` (the same page as one self-contained HTML file).

It reads only what ``I2XRun`` loads and draws with plain JavaScript modules shipped as package
data (no build step, no external resource). ``import lightning_i2x`` does not import it.
"""

from ._app import CSP, DashboardApp
from ._report import build_interactive_report, write_interactive_report
from ._runs import find_runs, is_run
from ._serve import is_loopback, serve

__all__ = ["DashboardApp", "CSP", "find_runs", "is_run", "serve", "is_loopback", "build_interactive_report",
           "write_interactive_report", "tensorboard_plugin"]


def tensorboard_plugin():
    """The TensorBoard plugin class (imports TensorBoard's plugin base when called)."""
    from ._tensorboard import I2XDashboardPlugin

    return I2XDashboardPlugin
