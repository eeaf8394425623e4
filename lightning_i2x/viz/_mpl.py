"""The matplotlib names the figures use, imported in this one place (Agg canvas, no pyplot).

Only the figure modules import this, and ``viz`` imports them only when a figure is drawn, so
``import lightning_i2x`` and a fit with ``views=False`` never load matplotlib. ``require`` runs
first: without matplotlib, drawing fails with an ImportError naming the figures and the install.
"""

from .._core import require

require("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

__all__ = ["FigureCanvasAgg", "LineCollection", "Figure", "Line2D", "Circle", "FancyArrowPatch", "FancyBboxPatch", "Rectangle"]
