"""``InfoDisentMeasure``: the model's target-layer channels unmixed by EPIC at the end of fit (the
head carried over as A U^T, so the contributions explain the model's own logits), stored for
the channel views: the gallery, the per-image contribution bars and the channel-to-class weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._core import check_int
from ..channels import cache_features, channel_purity, find_linear_head, fit_epic, unmix
from ..saliency import resolve_target_layer

__all__ = ["InfoDisentMeasure", "INFODISENT_ATTACHMENT"]

INFODISENT_ATTACHMENT = "infodisent"


@dataclass
class InfoDisentMeasure:
    """At the end of fit (``when="end"``), on the probe: cache the target layer's features once,
    find the model's avg-pool + linear head (``channels.find_linear_head``; another head fails
    with ``HeadMismatchError``, which the callback reports and training survives), fit EPIC's U
    for ``epochs`` epochs, and store as the ``"infodisent"`` attachment: ``rotation`` (D, D),
    ``weight`` A U^T (M, D) and ``bias``, each probe image's ``contributions`` (N, D) to its
    predicted class (``avg_pool(U Z)_k x weight[c, k]``; they sum with the bias to the model's
    logit), ``predicted``, each channel's ``top_images`` / ``top_locations`` (D, ``top``) and its
    purity before and after. Metrics ``infodisent_purity_before`` / ``_after`` (means)."""

    name: str = "infodisent"
    when: str = "end"
    epochs: int = 20
    top: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.when not in ("record", "end"):
            raise ValueError(f"InfoDisentMeasure.when must be one of ('record', 'end'), got {self.when!r}")
        check_int(self, "epochs", self.epochs, low=0)
        check_int(self, "top", self.top)

    def __call__(self, model, run, evidence, explanation, *, forward_fn=None) -> None:
        if evidence.images is None or evidence.labels is None:
            raise ValueError("InfoDisentMeasure needs the probe's images and labels in the evidence (the callback passes them)")
        images, labels = evidence.images, evidence.labels
        fwd = forward_fn or (lambda m, x: m(x))
        layer = resolve_target_layer(model, run.config.target_layer, images[:2], forward_fn=fwd)
        cached = cache_features(model, layer, (images, labels), forward_fn=forward_fn, where="the probe")
        w, b = (torch.from_numpy(t) for t in find_linear_head(model, cached).read())
        epic = fit_epic(cached.features, w, b, epochs=self.epochs, seed=self.seed, top=self.top)
        with torch.no_grad():
            z = unmix(epic.rotation, cached.features)
            pooled = z.mean(dim=(2, 3))  # (N, D)
            predicted = cached.logits.argmax(1)
            contributions = pooled * epic.weight[predicted]  # (N, D)
            peak, where = z.flatten(2).max(-1)  # (N, D)
            n = min(self.top, z.shape[0])
            top_images = peak.topk(n, dim=0).indices.T  # (D, n)
            top_locations = where.T.gather(1, top_images)
        before = channel_purity(cached.features, None, top=self.top)
        after = channel_purity(cached.features, epic.rotation, top=self.top)
        run.save_attachment(INFODISENT_ATTACHMENT, arrays={
            "rotation": epic.rotation.numpy(), "weight": epic.weight.numpy(), "bias": epic.bias.numpy(),
            "contributions": contributions.numpy().astype(np.float32), "predicted": predicted.numpy(),
            "top_images": top_images.numpy(), "top_locations": top_locations.numpy(),
            "purity_before": before, "purity_after": after,
        })
        run.record_metrics({"infodisent_purity_before": float(before.mean()), "infodisent_purity_after": float(after.mean())})
