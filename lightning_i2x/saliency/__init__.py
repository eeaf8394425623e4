"""Saliency: the methods by name with their capabilities, the native GradCAM, pytorch-grad-cam's
methods (imported when first used), I-GOS/iGOS++, the probe pass in batches, and finding the
target layer."""

from ._batches import probe_batches
from ._gradcam import ProbeBatch, graph_from_layer, native_gradcam, normalise_maps
from ._igos import AUTHORS_BLUR_FRACTION, IGOS_METHODS, default_mask_side, igos_maps, igos_probe_batch, smoothness_weight
from ._layers import TargetLayer, TokensToMap, infer_reshape_transform, recommended_target_layer, resolve_target_layer
from ._library import library_cam, library_cam_class
from ._registry import CAM_METHODS, SaliencyMethod, check_saliency_use, saliency_label, saliency_method
from ._upsample import upsample_maps

__all__ = [
    "CAM_METHODS", "SaliencyMethod", "saliency_method", "saliency_label", "check_saliency_use",
    "ProbeBatch", "probe_batches", "native_gradcam", "normalise_maps", "graph_from_layer",
    "library_cam", "library_cam_class",
    "IGOS_METHODS", "AUTHORS_BLUR_FRACTION", "igos_maps", "igos_probe_batch", "default_mask_side", "smoothness_weight", "upsample_maps",
    "TargetLayer", "TokensToMap", "infer_reshape_transform", "recommended_target_layer", "resolve_target_layer",
]
