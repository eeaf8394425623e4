"""Structured attention graphs (SAG): regions, the beam search, the graph, and the measure."""

from ._graph import SAG, MSEResult, SAGEdge, SAGNode
from ._measure import SAGMeasure, StoredSAG, stored_sags
from ._mses import diverse_mses, minimal_sufficient_explanations, mse_stats, sag
from ._regions import DEFAULT_BLUR, DEFAULT_SIZE_SLACK, default_grid_size, grid_regions, sag_blur_sigma

__all__ = [
    "SAG", "SAGNode", "SAGEdge", "MSEResult", "grid_regions", "default_grid_size", "sag_blur_sigma", "DEFAULT_BLUR",
    "minimal_sufficient_explanations", "diverse_mses", "sag", "mse_stats", "SAGMeasure", "StoredSAG", "stored_sags",
    "DEFAULT_SIZE_SLACK",
]
