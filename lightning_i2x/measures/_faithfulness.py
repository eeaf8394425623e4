"""Deletion and insertion: do the pixels a saliency map ranks first carry the model's decision?

The metrics of RISE (Petsiuk, Das, Saenko 2018) as I-GOS and iGOS++ (Qi, Khorram, Li 2020;
Khorram, Lawson, Li 2021) use them. Pixels are taken in decreasing saliency order (the map
upsampled bilinearly to the image; ties go to the lower flat pixel index) and, in ``steps`` equal
slices of the image:

- deletion: replaced by the fill (default a heavily blurred copy of the image, as the iGOS++ code
  does; RISE deletes to a constant, ``fill="baseline"``): a faithful map makes the target-class
  probability fall at once, a low area under the curve;
- insertion: restored onto the fill, starting from the fully filled image: a faithful map makes
  the probability rise at once, a high area under the curve.

Each curve has ``steps + 1`` points at pixel fractions ``0, 1/steps, ..., 1`` (pixel counts rounded
to whole pixels) and its area is the trapezoid rule over the fraction, so x runs over [0, 1]. One
fill is used for both curves, so that the deletion curve ends where the insertion curve starts.

Cost: ``2 (steps + 1)`` model forwards per image, without autograd: with the default 64 steps,
130 forwards, about 43 probe passes (one probe pass = one forward + backward of the image, counted
as three forwards). All images and steps of a batch go through the model together,
``batch_size`` model inputs at a time.

The random order (``random_baseline``) is the chance level every area should be read against.

``FaithfulnessMeasure`` runs both on the maps of every I2X record (``I2XCallback(measures=[...])``)
and keeps the four mean areas as scalars of the run, so faithfulness can be followed over
training; ``plot_faithfulness(run)`` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._core import fail, is_int
from .._model import ForwardFn, model_device, preserved_rng
from ..perturb import FILLS, apply_mask, default_blur_sigma, fill_values, target_probabilities
from ..saliency import upsample_maps

__all__ = ["FaithfulnessMeasure", "FaithfulnessResult", "pixel_ranks", "deletion_insertion", "random_maps", "random_baseline"]



@dataclass(frozen=True)
class FaithfulnessResult:
    """Deletion and insertion curves and their areas, on the CPU in float64.

    ``fractions`` (steps + 1,): fraction of pixels removed (deletion) or restored (insertion) at each
    point; ``deletion_curves`` and ``insertion_curves`` (B, steps + 1): the target-class softmax
    probability at each point; ``deletion_auc`` and ``insertion_auc`` (B,): trapezoid areas over
    ``fractions``. Lower deletion and higher insertion areas mean a more faithful map."""

    fractions: torch.Tensor
    deletion_curves: torch.Tensor
    insertion_curves: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor

    @property
    def mean_deletion_auc(self) -> float:
        return float(self.deletion_auc.mean())

    @property
    def mean_insertion_auc(self) -> float:
        return float(self.insertion_auc.mean())


def _check_inputs(images, targets, maps, steps) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        raise ValueError(f"maps must be a (B, h, w) tensor, got {type(maps).__name__} {tuple(getattr(maps, 'shape', ()))}")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {maps.shape[0]} maps: pass one map per image")
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    t = torch.as_tensor(targets).reshape(-1)
    if t.shape[0] != images.shape[0] or t.is_floating_point():
        raise ValueError(f"targets must be ({images.shape[0]},) integer class indices, got {t.dtype} of shape {tuple(torch.as_tensor(targets).shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return t.long()


def pixel_ranks(maps: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) int64 rank of each pixel in decreasing saliency (0 = most salient) after
    ``saliency.upsample_maps`` (bilinear at pixel centres, the one the I-GOS optimiser uses); ties go to the lower flat index."""
    b = maps.shape[0]
    up = upsample_maps(maps.detach().double(), image_size)  # the I-GOS optimiser's upsampler too
    order = torch.sort(up.reshape(b, -1), dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand(b, -1))
    return ranks.view(b, *image_size)


def _pixel_counts(n_pixels: int, steps: int) -> torch.Tensor:
    """Pixels removed or restored after step k = round(k N / steps), k = 0..steps, exact integers."""
    return torch.tensor([(2 * k * n_pixels + steps) // (2 * steps) for k in range(steps + 1)], dtype=torch.long)


def _curves(model, images, fills, targets, ranks, counts, *, insertion, batch_size, forward_fn):
    """Target probabilities (B, steps + 1) of all perturbed copies, ``batch_size`` inputs a forward."""
    b, s1 = images.shape[0], counts.shape[0]
    counts = counts.to(images.device)
    out = []
    for start in range(0, b * s1, batch_size):
        j = torch.arange(start, min(start + batch_size, b * s1), device=images.device)
        i, k = j // s1, j % s1
        mask = ranks[i] < counts[k][:, None, None]
        x, v = (fills[i], images[i]) if insertion else (images[i], fills[i])
        out.append(target_probabilities(model, apply_mask(x, mask, v), targets[i], batch_size=batch_size, forward_fn=forward_fn))
    return torch.cat(out).view(b, s1)


def deletion_insertion(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    *,
    steps: int = 64,
    fill: str = "blur",
    sigma: float | None = None,
    baseline: float | None = None,
    batch_size: int = 256,
    forward_fn: ForwardFn | None = None,
) -> FaithfulnessResult:
    """Deletion and insertion curves and areas of ``maps`` (B, h, w; any resolution, higher = more
    important) for ``images`` (B, C, H, W) and ``targets`` (B,) class indices.

    ``fill``: what deleted pixels become and insertion starts from, one of ``perturb.FILLS``
    (default ``"blur"`` with ``sigma`` = ``default_blur_sigma``; ``"baseline"`` is a constant,
    ``baseline`` or the per-channel mean). ``"noise"`` and ``"random"`` are drawn from a generator
    seeded 0, not from the global RNG. The model's modes, gradients and the RNG are left as they
    were. Raises ValueError on mismatched shapes, ``steps`` < 1 or an unknown fill.
    """
    t = _check_inputs(images, targets, maps, steps)
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = model_device(model)
    x = images.detach().to(device)
    h, w = x.shape[-2:]
    with preserved_rng():
        gen = torch.Generator(device=device).manual_seed(0) if fill in ("noise", "random") else None
        # "resample": each image's pixels come from an image of another target class (perturb.resample_donors)
        fills = fill_values(x, fill, sigma=default_blur_sigma((h, w)) if sigma is None else float(sigma), baseline=baseline, generator=gen,
                            labels=t.detach().cpu())
        ranks = pixel_ranks(maps.to(device), (h, w))
        counts = _pixel_counts(h * w, steps)
        t = t.to(device)
        dele = _curves(model, x, fills, t, ranks, counts, insertion=False, batch_size=batch_size, forward_fn=forward_fn)
        ins = _curves(model, x, fills, t, ranks, counts, insertion=True, batch_size=batch_size, forward_fn=forward_fn)
    fractions = counts.double() / (h * w)
    dele, ins = dele.double().cpu(), ins.double().cpu()
    return FaithfulnessResult(fractions, dele, ins, torch.trapezoid(dele, fractions, dim=1), torch.trapezoid(ins, fractions, dim=1))


def random_maps(n: int, image_size: tuple[int, int], *, seed: int = 0) -> torch.Tensor:
    """(n, H, W) uniform random maps from a local generator: a random pixel order, the chance level."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand((int(n), int(image_size[0]), int(image_size[1])), generator=gen, dtype=torch.float64)


def random_baseline(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    seed: int = 0,
    **kwargs,
) -> FaithfulnessResult:
    """``deletion_insertion`` of a seeded random pixel order (global RNG untouched); ``kwargs`` as there."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    maps = random_maps(images.shape[0], tuple(images.shape[-2:]), seed=seed)
    return deletion_insertion(model, images, targets, maps, **kwargs)


@dataclass(frozen=True)
class FaithfulnessMeasure:
    """Deletion and insertion areas of each record's maps, followed over training.

    A measure for ``I2XCallback(measures=[FaithfulnessMeasure()])`` (``lightning_i2x.measures``):
    after every record (``when="record"``; ``"end"``: once, on the latest checkpoint) it takes a
    seeded subset of ``images`` probe images (the same subset every time, so the series compare
    like with like), scores the record's maps (feature resolution, upsampled bilinearly) with
    ``deletion_insertion`` for the class the maps were computed for (the label, or the predicted
    class when the run's ``cam_target`` is ``"predicted"``), does the same for a seeded random
    order at the maps' resolution (the chance level: the same upsampling, only the order
    differs), and records the four means as ``<name>/deletion_auc``, ``<name>/insertion_auc``,
    ``<name>/deletion_auc_random`` and ``<name>/insertion_auc_random`` (logged by the callback as
    ``i2x/faithfulness/...``). The per-image areas and the mean curves go into the run's
    attachment ``<name>``. The model's modes, gradients and the RNG are left as they were.

    Cost per record: ``4 (steps + 1)`` forwards without autograd per chosen image (deletion and
    insertion, maps and random order), i.e. ``4 (steps + 1) images`` forwards; a probe pass of N
    images costs about ``2 N`` (a forward and a backward from the target layer), so the measure
    costs about ``2 (steps + 1) images / N`` probe passes: with the defaults (32 images, 32 steps)
    2,112 / N, i.e. about 2 probe passes of a 1,000-image probe, 10 of a 200-image one.

    Args:
        images: probe images scored (a seeded subset; None or more than the probe: all of them).
        steps: points of each curve after the first (``deletion_insertion``'s ``steps``).
        fill: what deleted pixels become, one of ``perturb.FILLS`` (default the blurred image).
        seed: of the subset and of the random order.
        batch_size: model inputs per forward.
        name: prefix of the metrics and name of the attachment.
        when: ``"record"`` or ``"end"``.
    """

    images: int | None = 32
    steps: int = 32
    fill: str = "blur"
    seed: int = 0
    batch_size: int = 256
    name: str = "faithfulness"
    when: str = "record"

    def __post_init__(self):
        if self.images is not None and not (is_int(self.images) and self.images >= 1):
            fail(self, "images", "an integer >= 1 or None", self.images)
        if not (is_int(self.steps) and self.steps >= 1):
            fail(self, "steps", "an integer >= 1", self.steps)
        if self.fill not in FILLS:
            fail(self, "fill", f"one of {FILLS}", self.fill)
        if not (is_int(self.seed) and self.seed >= 0):
            fail(self, "seed", "an integer >= 0", self.seed)
        if not (is_int(self.batch_size) and self.batch_size >= 1):
            fail(self, "batch_size", "an integer >= 1", self.batch_size)
        if not isinstance(self.name, str) or not self.name or not all(ch.isalnum() or ch in "-_" for ch in self.name):
            fail(self, "name", "a non-empty name of letters, digits, '-' and '_'", self.name)
        if self.when not in ("record", "end"):
            fail(self, "when", "one of ('record', 'end')", self.when)

    def subset(self, num_probe: int) -> torch.Tensor:
        """The probe indices scored (sorted), the same for every record of a run."""
        if self.images is None or self.images >= num_probe:
            return torch.arange(num_probe)
        perm = torch.randperm(num_probe, generator=torch.Generator().manual_seed(self.seed))
        return perm[: self.images].sort().values

    def __call__(self, model: torch.nn.Module, run: Any, evidence: Any, explanation: Any = None, *,
                 forward_fn: ForwardFn | None = None) -> dict[str, float]:
        """Score ``evidence`` (a ``record.ProbeEvidence`` with the probe ``images`` and ``labels``),
        store the means in ``run`` (when given) and return them."""
        if getattr(evidence, "images", None) is None or getattr(evidence, "labels", None) is None:
            raise ValueError(f"{type(self).__name__} needs the probe images and labels in the evidence (ProbeEvidence.images / .labels)")
        n = len(evidence)
        if evidence.images.shape[0] != n or evidence.labels.shape[0] != n:
            raise ValueError(f"the evidence has {n} maps but {evidence.images.shape[0]} images and {evidence.labels.shape[0]} labels")
        idx = self.subset(n)
        config = getattr(run, "config", None)
        predicted = config is not None and config.probe_pass.cam_target == "predicted"
        targets = evidence.confidences.detach().cpu()[idx].argmax(1) if predicted else evidence.labels.cpu()[idx]
        images, maps = evidence.images[idx], evidence.cams.detach().cpu()[idx].float()
        kw = dict(steps=self.steps, fill=self.fill, batch_size=self.batch_size, forward_fn=forward_fn)
        with preserved_rng():
            found = deletion_insertion(model, images, targets, maps, **kw)
            chance = deletion_insertion(model, images, targets, random_maps(len(idx), tuple(maps.shape[-2:]), seed=self.seed), **kw)
        values = {
            f"{self.name}/deletion_auc": found.mean_deletion_auc,
            f"{self.name}/insertion_auc": found.mean_insertion_auc,
            f"{self.name}/deletion_auc_random": chance.mean_deletion_auc,
            f"{self.name}/insertion_auc_random": chance.mean_insertion_auc,
        }
        if run is not None:
            run.record_metrics(values)
            run.save_attachment(self.name, arrays={
                "indices": idx.numpy(), "targets": targets.numpy(), "fractions": found.fractions.numpy(),
                "deletion_auc": found.deletion_auc.numpy(), "insertion_auc": found.insertion_auc.numpy(),
                "deletion_auc_random": chance.deletion_auc.numpy(), "insertion_auc_random": chance.insertion_auc.numpy(),
                "deletion_curve": found.deletion_curves.mean(0).numpy(), "insertion_curve": found.insertion_curves.mean(0).numpy(),
                "deletion_curve_random": chance.deletion_curves.mean(0).numpy(),
                "insertion_curve_random": chance.insertion_curves.mean(0).numpy(),
            })
        return values
