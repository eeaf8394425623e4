"""Disentangled channels (InfoDisent, EPIC): an interpretable head and a prototype source.

InfoDisent (Struski et al., arXiv 2409.10329) keeps a trained backbone frozen and puts an
orthogonal unmixing U = exp(A - A^T) on its target layer's channels, pools each with mx_pool and
scores with non-negative weights, so each prediction is a sum of per-channel contributions.
EPIC (arXiv 2505.12897) trains U alone, for channel purity, and carries the head over as A U^T,
so every prediction stays exactly as it was: the form behind ``PrototypeOptions(source="channels")``.
"""

from ._epic import EpicResult, channel_purity, fit_epic
from ._features import CachedFeatures, HeadMismatchError, LinearHead, cache_features, channel_head, find_linear_head
from ._fit import ChannelExplanation, InfoDisentResult, fit_infodisent
from ._head import InfoDisentHead, unmix
from ._localisation import localisation_rate
from ._prototypes import ChannelStream, channel_prototypes, top_channels
from ._unmix import amari_index, mx_pool, orthogonal, relaxed_mx_pool

__all__ = [
    "orthogonal", "mx_pool", "relaxed_mx_pool", "amari_index", "unmix",
    "InfoDisentHead", "fit_infodisent", "InfoDisentResult", "ChannelExplanation",
    "CachedFeatures", "cache_features", "LinearHead", "find_linear_head", "channel_head", "HeadMismatchError",
    "EpicResult", "fit_epic", "channel_purity",
    "ChannelStream", "channel_prototypes", "top_channels", "localisation_rate",
]
