"""How much the model relies on each prototype: a faithfulness check of the explanation.

For every probe image that holds prototype k, the content of k's locations is removed and the drop
of the true class's probability is measured; the same is done with ``n_random`` sets of random
locations of the same area in the same image. Reliance is the difference of the two mean drops:
what hiding k costs the model beyond what hiding that much of the image anywhere costs it. A
prototype the model ignores has reliance near 0 however salient GradCAM says it is; a shortcut the
model leans on (a decoy swatch) has a large one though it covers one location.

How k is hidden (``intervention``, ``fill``):

- ``intervention="pixels"`` (default) with a ``perturb`` fill; the default ``fill="resample"``
  puts in the same pixels of another probe image of another class (``perturb.resample_donors``).
  It is the default because it is the intervention that holds up on the planted cases
  (``tests/test_interventions.py``): a model that reads only the shade of a uniform corner swatch
  loses its prediction when the swatch's pixels come from an image of another class (reliance
  about 0.75 there), while the Gaussian blur, the former default, leaves a uniform swatch's shade
  in place (reliance about 0: the Decoy-MNIST variant whose swatch prototype got reliance
  <= 0.0074 and no suspect). It needs no layer, so it works on any model and any run;
- ``intervention="latent"``: k's feature vectors at the target layer (``layer``, a module whose
  output is (B, C, h, w) at the assignment's resolution) are replaced, through a forward hook
  (``perturb.LatentSwap``), by the same image's donor's feature vectors at the same positions:
  what the layer's later part reads there no longer comes from this image. It tests the
  prototypes where they live, with no pixel fill to get wrong, and agrees with the resampling
  fill on the planted swatch; the random locations are swapped the same way;
- ``intervention="project"``: at the same layer, k's feature vectors keep everything but their
  component in k's centred subspace (``analysis.suspect_basis`` on the probe's own features there:
  k's centroid minus the mean of the other locations, then up to ``directions`` singular
  directions of k's locations' centred vectors, so a shortcut drawn in several shades is covered),
  which is set to the other locations' mean (``perturb.LatentProjection``, a forward hook). It
  removes what makes k's locations k's and nothing else (no other image's content comes in); the
  random locations get the same projection. On the planted swatch model it gives the swatch a
  large reliance where the blur gives 0 (``tests/test_latent_projection.py``).

Region: all of k's locations in the image, salient or not (GradCAM's salient region is what is
being checked, so it is not used to choose what is hidden).

Cost: one forward pass per probe image for the clean probabilities, plus ``1 + n_random`` per
(image, present prototype) pair, i.e. ``N + P (1 + n_random)`` forwards with ``P`` the number of
such pairs (at most ``N * min(K, h * w)``; ``max_images_per_prototype`` caps it at
``K * max_images_per_prototype``). A forward is about a third of a probe pass (forward + backward
per image), so the cost is about ``(N + P (1 + n_random)) / (3 N)`` probe passes; with 7x7 maps,
K = 32 and n_random = 4, typically 15-25 probe passes. All of it runs without autograd in batches
of ``batch_size`` images, in eval mode, the model's modes put back after. The latent intervention
keeps the target layer's output for the N probe images on the images' device.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .._core import check_choice, check_int
from .._model import ForwardFn, model_device
from ..analysis import INTERVENTIONS, RELIANCE_ATTACHMENT, Reliance, suspect_basis
from ..errors import I2XRunError
from ..perturb import FILLS, LatentProjection, LatentSwap, apply_mask, default_sigma, fill_values, resample_donors, target_probabilities

__all__ = ["prototype_reliance", "latent_reliance", "prototype_subspaces", "random_locations", "RelianceMeasure", "reliance_of_run",
           "DEFAULT_FILL", "DEFAULT_INTERVENTION"]

DEFAULT_FILL = "resample"
"""The reliance's default fill: the pixels of another image of another class (module docstring)."""
DEFAULT_INTERVENTION = "pixels"
"""The reliance's default intervention: in the pixels (needs no layer)."""

def random_locations(seed: int, image: int, prototype: int, area: int, n_random: int, num_locations: int) -> np.ndarray:
    """(n_random, num_locations) bool: ``n_random`` sets of ``area`` distinct locations drawn
    uniformly from the whole map (they may overlap the prototype's own), from a generator seeded
    by ``(seed, image, prototype)``, so a draw depends neither on batching nor on which other
    images or prototypes are measured."""
    rng = np.random.default_rng([int(seed), int(image), int(prototype)])
    out = np.zeros((n_random, num_locations), dtype=bool)
    for r in range(n_random):
        out[r, rng.permutation(num_locations)[:area]] = True
    return out


def _check(images, labels, assignment, num_prototypes, fill, n_random, batch_size, max_images_per_prototype, num_classes):
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise TypeError(f"images must be a (B, C, H, W) tensor, got {type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    for name, v, low in (("num_prototypes", num_prototypes, 1), ("n_random", n_random, 1), ("batch_size", batch_size, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if max_images_per_prototype is not None and (not isinstance(max_images_per_prototype, (int, np.integer)) or max_images_per_prototype < 1):
        raise ValueError(f"max_images_per_prototype must be a positive integer or None, got {max_images_per_prototype!r}")
    y = torch.as_tensor(labels).reshape(-1).long()
    b = images.shape[0]
    if y.shape[0] != b:
        raise ValueError(f"{b} images but {y.shape[0]} labels")
    a = np.asarray(assignment)
    if a.ndim != 3 or a.shape[0] != b:
        raise ValueError(f"assignment must be (B, h, w) with B={b} (the run's assignment() for these images), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"assignment must hold integer prototype ids, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= num_prototypes):
        raise ValueError(f"assignment ids must lie in [0, {num_prototypes}), got [{a.min()}, {a.max()}]")
    m = int(y.max()) + 1 if num_classes is None and b else int(num_classes or 1)
    if b and (int(y.min()) < 0 or int(y.max()) >= m):
        raise ValueError(f"labels must lie in [0, {m}), got [{int(y.min())}, {int(y.max())}]")
    return y, a.astype(np.int64), m


def prototype_reliance(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels,
    assignment: np.ndarray,
    num_prototypes: int,
    *,
    fill: str = DEFAULT_FILL,
    intervention: str = DEFAULT_INTERVENTION,
    layer: torch.nn.Module | None = None,
    n_random: int = 4,
    seed: int = 0,
    batch_size: int = 256,
    max_images_per_prototype: int | None = None,
    num_classes: int | None = None,
    sigma: float | None = None,
    forward_fn: ForwardFn | None = None,
    directions: int = 3,
) -> Reliance:
    """Reliance of ``model`` on each of ``num_prototypes`` prototypes over the probe ``images``.

    Only images where k is present count for k; with ``max_images_per_prototype`` a seeded subset
    of them. Leaves the model's modes, gradients and the global RNGs as they were.

    Args:
        model: the classifier.
        images: (B, C, H, W) probe images.
        labels: (B,) true classes.
        assignment: (B, h, w) prototype id of every feature location (``I2XRun.assignment()``, at
            feature resolution; upsampled to pixels with ``perturb.pixel_mask``).
        num_prototypes: K.
        fill: a ``perturb`` fill for ``intervention="pixels"`` (default ``"resample"``: the pixels
            of another image of another class, ``perturb.resample_donors(labels, seed)``); noise
            and random values are drawn once per image from a generator seeded by ``seed`` and
            shared by k's fill and the random fills. Ignored by the latent intervention.
        intervention: ``"pixels"``, ``"latent"`` or ``"project"`` (module docstring;
            ``latent_reliance``).
        layer: the target layer module, for ``intervention="latent"`` and ``"project"``.
        n_random: random location sets per (image, prototype).
        seed: seeds the random locations, the subsets, the donors and the noise.
        batch_size: images per forward.
        max_images_per_prototype: at most this many images per prototype (None: all).
        num_classes: M (default ``max(labels) + 1``).
        sigma: the blur's sigma (default ``perturb.default_sigma``).
        forward_fn: how to call the model (default ``model(x)``).
        directions: ``intervention="project"``'s directions per prototype (``suspect_basis``).

    Raises TypeError / ValueError on bad input, ValueError when the latent intervention has no
    layer or the layer's output does not match the assignment's (h, w).
    """
    y, a, m = _check(images, labels, assignment, num_prototypes, fill, n_random, batch_size, max_images_per_prototype, num_classes)
    if intervention not in INTERVENTIONS:
        raise ValueError(f"intervention must be one of {INTERVENTIONS}, got {intervention!r}")
    if intervention in ("latent", "project"):
        if layer is None:
            raise ValueError(f'intervention="{intervention}" needs layer= the target layer module (its output (B, C, h, w) at '
                             "the assignment's resolution)")
        fill = "resample" if intervention == "latent" else "mean"
    check_int("prototype_reliance", "directions", directions)
    b, _, big_h, big_w = images.shape
    h, w = a.shape[1:]
    k_count = int(num_prototypes)
    locs = h * w
    flat = a.reshape(b, locs)
    area = np.zeros((b, k_count), dtype=np.int64)
    np.add.at(area, (np.repeat(np.arange(b), locs), flat.ravel()), 1)

    # the (image, prototype) pairs measured
    pairs: list[tuple[int, int]] = []
    for k in range(k_count):
        imgs = np.flatnonzero(area[:, k])
        if max_images_per_prototype is not None and imgs.size > max_images_per_prototype:
            imgs = np.sort(np.random.default_rng([int(seed), k, 1]).choice(imgs, max_images_per_prototype, replace=False))
        pairs.extend((int(i), k) for i in imgs)
    pi = np.array([p[0] for p in pairs], dtype=np.int64)
    pk = np.array([p[1] for p in pairs], dtype=np.int64)

    # location masks: row j*(1+R) is pair j's prototype, the next R rows its random draws
    rows = 1 + n_random
    loc_masks = np.zeros((len(pairs) * rows, locs), dtype=bool)
    for j, (i, k) in enumerate(pairs):
        loc_masks[j * rows] = flat[i] == k
        loc_masks[j * rows + 1 : (j + 1) * rows] = random_locations(seed, i, k, int(area[i, k]), n_random, locs)
    job_image = np.repeat(pi, rows)

    device = images.device
    y_dev = y.to(device)
    donors = resample_donors(y, seed)
    probs = np.empty(len(job_image), dtype=np.float64)
    if intervention in ("latent", "project"):
        with (LatentSwap(layer) if intervention == "latent" else LatentProjection(layer)) as swap:
            base = target_probabilities(model, images, y_dev, batch_size=batch_size, forward_fn=forward_fn).double().cpu().numpy()
            feats = torch.cat(swap.captured) if swap.captured else None
            swap.captured = []
            if feats is None or tuple(feats.shape[2:]) != (h, w) or feats.shape[0] != b:
                raise ValueError(f"the layer's output has shape {None if feats is None else tuple(feats.shape)}; the latent "
                                 f"intervention needs ({b}, C, {h}, {w}), the assignment's locations")
            if intervention == "latent":
                donor_feats = feats[torch.as_tensor(donors, device=feats.device)]
            else:
                bases, refs = prototype_subspaces(feats, a, k_count, directions)
                job_proto = torch.as_tensor(np.repeat(pk, rows), device=feats.device)
            for s in range(0, len(job_image), batch_size):
                idx = torch.as_tensor(job_image[s : s + batch_size], device=device)
                swap.mask = torch.as_tensor(loc_masks[s : s + batch_size], device=feats.device).view(-1, h, w)
                if intervention == "latent":
                    swap.values = donor_feats[idx.to(feats.device)]
                else:
                    swap.basis, swap.reference = bases[job_proto[s : s + batch_size]], refs[job_proto[s : s + batch_size]]
                probs[s : s + batch_size] = target_probabilities(model, images[idx], y_dev[idx], batch_size=batch_size,
                                                                 forward_fn=forward_fn).double().cpu().numpy()
    else:
        sig = default_sigma((big_h, big_w), (h, w)) if sigma is None else float(sigma)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        values = fill_values(images, fill, sigma=sig, generator=gen, donors=donors)
        pix_rows = torch.as_tensor((np.arange(big_h) * h) // big_h, device=device)
        pix_cols = torch.as_tensor((np.arange(big_w) * w) // big_w, device=device)
        base = target_probabilities(model, images, y_dev, batch_size=batch_size, forward_fn=forward_fn).double().cpu().numpy()
        for s in range(0, len(job_image), batch_size):
            idx = torch.as_tensor(job_image[s : s + batch_size], device=device)
            lm = torch.as_tensor(loc_masks[s : s + batch_size], device=device).view(-1, h, w)
            pm = lm[:, pix_rows][:, :, pix_cols]  # nearest-neighbour upsampling, as perturb.pixel_mask
            x = apply_mask(images[idx], pm, values[idx])
            probs[s : s + batch_size] = target_probabilities(model, x, y_dev[idx], batch_size=batch_size, forward_fn=forward_fn).double().cpu().numpy()

    drops = (base[job_image] - probs).reshape(len(pairs), rows)
    own = drops[:, 0] if len(pairs) else np.zeros(0)
    rand = drops[:, 1:].mean(axis=1) if len(pairs) else np.zeros(0)
    yc = y.cpu().numpy()[pi] if len(pairs) else np.zeros(0, dtype=np.int64)

    def mean_by(index: np.ndarray, size: int, values_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cnt = np.bincount(index, minlength=size).astype(np.int64)
        tot = np.bincount(index, weights=values_, minlength=size)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
        return mean, cnt

    drop, count = mean_by(pk, k_count, own)
    random_drop, _ = mean_by(pk, k_count, rand)
    mean_area, _ = mean_by(pk, k_count, area[pi, pk].astype(np.float64) if len(pairs) else np.zeros(0))
    cell = pk * m + yc
    class_drop, class_count = mean_by(cell, k_count * m, own)
    class_random, _ = mean_by(cell, k_count * m, rand)
    return Reliance(
        drop=drop, random_drop=random_drop, reliance=drop - random_drop, count=count,
        class_drop=class_drop.reshape(k_count, m), class_random_drop=class_random.reshape(k_count, m),
        class_count=class_count.reshape(k_count, m), area=mean_area, fill=fill, n_random=int(n_random), seed=int(seed),
        intervention=intervention,
    )


def prototype_subspaces(features: torch.Tensor, assignment: np.ndarray, num_prototypes: int,
                        directions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, d, r) each prototype's centred subspace (``suspect_basis`` of the (B, d, h, w)
    ``features`` with their (B, h, w) ``assignment``; zero columns pad a smaller rank) and (K, d)
    the mean feature of its other locations, on the features' device."""
    d = features.shape[1]
    flat = features.permute(0, 2, 3, 1).reshape(-1, d).double().cpu().numpy()
    ids = np.asarray(assignment).reshape(-1)
    found = [suspect_basis(flat, ids, [k], directions=directions) for k in range(int(num_prototypes))]
    r = max([1, *(f.rank for f in found)])
    bases = np.zeros((len(found), d, r), dtype=np.float32)
    for k, f in enumerate(found):
        bases[k, :, : f.rank] = f.basis
    refs = np.stack([f.reference for f in found]).astype(np.float32)
    return (torch.as_tensor(bases, device=features.device, dtype=features.dtype),
            torch.as_tensor(refs, device=features.device, dtype=features.dtype))


def latent_reliance(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, labels, assignment: np.ndarray,
                    num_prototypes: int, **kwargs) -> Reliance:
    """``prototype_reliance(..., intervention="latent", layer=layer)``: k's feature vectors at
    ``layer`` replaced by those of an image of another class at the same positions (a forward
    hook, so any model whose ``layer`` outputs (B, C, h, w)). ``kwargs`` as ``prototype_reliance``."""
    return prototype_reliance(model, images, labels, assignment, num_prototypes, intervention="latent", layer=layer, **kwargs)


# -- on a run: a measure the callback runs, and the same thing by hand ----------------------------------
def _check_options(owner: str, fill, n_random, seed, max_images_per_prototype, batch_size, intervention="pixels",
                   directions=3) -> None:
    check_choice(owner, "fill", fill, FILLS)
    check_int(owner, "directions", directions)
    check_choice(owner, "intervention", intervention, INTERVENTIONS)
    check_int(owner, "n_random", n_random)
    check_int(owner, "seed", seed, low=0)
    check_int(owner, "max_images_per_prototype", max_images_per_prototype, optional=True)
    check_int(owner, "batch_size", batch_size)


def _run_layer(run, model: torch.nn.Module, layer) -> torch.nn.Module:
    """The module of the latent intervention: ``layer`` itself, or the submodule of that name
    (default the run's recorded target layer)."""
    if isinstance(layer, torch.nn.Module):
        return layer
    name = layer if layer is not None else (run.config.target_layer if getattr(run, "config", None) is not None else None)
    if not isinstance(name, str):
        raise ValueError('the latent interventions need layer= (a module or its name): the run records no target layer')
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the model has no submodule {name!r} (the latent intervention's layer)") from None


def reliance_of_run(
    run,
    model: torch.nn.Module,
    *,
    fill: str = DEFAULT_FILL,
    intervention: str = DEFAULT_INTERVENTION,
    layer: torch.nn.Module | str | None = None,
    n_random: int = 4,
    seed: int = 0,
    max_images_per_prototype: int | None = 64,
    batch_size: int = 256,
    forward_fn: ForwardFn | None = None,
    store: bool = True,
    directions: int = 3,
) -> Reliance:
    """Measure ``model``'s reliance on each of the run's prototypes over the run's own probe images
    (``prototype_reliance`` with ``run.assignment()``) and, with ``store``, keep it in the run as
    the attachment ``"reliance"`` tied to the latest checkpoint (``load_reliance`` reads it back;
    ``I2XRun.suspects`` needs it).

    ``model`` should be the model the run's prototypes come from (the latest record: at the end of
    fit, the trained model). ``fill`` and ``intervention`` as ``prototype_reliance`` (default the
    resampling fill in the pixels); ``layer``: the latent interventions' module or its name
    (default the run's recorded target layer); ``directions``: ``"project"``'s, as
    ``prototype_reliance``. Cost: ``N + P (1 + n_random)`` forwards without
    autograd, with ``P`` the measured (image, prototype) pairs, at most
    ``K * max_images_per_prototype``: with the defaults (K = 32, 64 images each, 4 random draws)
    at most ``N + 10240`` forwards, about ``1/3 + 3400 / N`` probe passes (a probe pass is a
    forward and a backward per image), e.g. about 7 probe passes for a 500-image probe and 2 for
    a 2000-image one.

    Raises I2XRunError when the run has no prototypes or holds no probe images (recorded with
    ``ProbePassOptions(store_images=False)`` or a probe over 64 MiB), ValueError on a bad option.
    """
    _check_options("reliance_of_run", fill, n_random, seed, max_images_per_prototype, batch_size, intervention, directions)
    if run.prototypes is None:
        raise I2XRunError(f"{run.path} has no prototypes yet (no checkpoint recorded): nothing to measure")
    if run.images is None:
        raise I2XRunError(f"{run.path} holds no probe images (recorded with store_images=False or a probe over 64 MiB): "
                          "reliance hides parts of those images; record the run with ProbePassOptions(store_images=True)")
    module = _run_layer(run, model, layer) if intervention in ("latent", "project") else None
    device = model_device(model)
    images = torch.as_tensor(np.asarray(run.images), dtype=torch.float32, device=device)
    rel = prototype_reliance(
        model, images, torch.as_tensor(run.labels), run.assignment(), run.num_prototypes, fill=fill, n_random=n_random,
        seed=seed, batch_size=batch_size, max_images_per_prototype=max_images_per_prototype, num_classes=run.num_classes,
        forward_fn=forward_fn, intervention=intervention, layer=module, directions=directions,
    )
    if store:
        run.save_attachment(RELIANCE_ATTACHMENT, arrays={**rel.to_arrays(), "reference": np.asarray(-1 if run.reference is None else run.reference)})
    return rel


@dataclasses.dataclass(frozen=True)
class RelianceMeasure:
    """The reliance of the model on each prototype, as a measure of ``I2XCallback(measures=[...])``:
    stored in the run as the attachment ``"reliance"`` (``Reliance.to_arrays()``), which
    ``I2XRun.suspects`` and the targeted fine-tuning's ``prototypes="suspects"`` read.

    when: ``"end"`` (default: once, at the end of fit, on the final model and prototypes) or
        ``"record"`` (after every record: the reliance history, at that cost each time).
    fill: as ``reliance_of_run`` (default ``"resample"``, content-removing).
    intervention: ``"pixels"`` (default), ``"latent"`` or ``"project"`` (at the run's target layer).
    directions: ``"project"``'s directions per prototype, as ``prototype_reliance``.
    n_random: as ``reliance_of_run``.
    seed: as ``reliance_of_run``.
    max_images_per_prototype: as ``reliance_of_run``.
    batch_size: as ``reliance_of_run``.

    Cost per run of it: ``N + P (1 + n_random)`` forwards (no backward), P at most
    ``K * max_images_per_prototype``; with the defaults about 7 probe passes for a 500-image probe.
    Needs the probe images in the run (``ProbePassOptions.store_images``, the default).
    """

    name: str = "reliance"
    when: str = "end"
    fill: str = DEFAULT_FILL
    n_random: int = 4
    seed: int = 0
    max_images_per_prototype: int | None = 64
    batch_size: int = 256
    intervention: str = DEFAULT_INTERVENTION
    directions: int = 3

    def __post_init__(self):
        if self.when not in ("record", "end"):
            raise ValueError(f"RelianceMeasure.when must be one of ('record', 'end'), got {self.when!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"RelianceMeasure.name must be a non-empty string, got {self.name!r}")
        _check_options("RelianceMeasure", self.fill, self.n_random, self.seed, self.max_images_per_prototype, self.batch_size,
                       self.intervention, self.directions)

    def __call__(self, model, run, evidence=None, explanation=None, *, forward_fn: ForwardFn | None = None) -> None:
        rel = reliance_of_run(run, model, fill=self.fill, n_random=self.n_random, seed=self.seed,
                              max_images_per_prototype=self.max_images_per_prototype, batch_size=self.batch_size,
                              forward_fn=forward_fn, intervention=self.intervention, directions=self.directions)
        finite = rel.reliance[np.isfinite(rel.reliance)]
        if finite.size:
            run.record_metrics({"reliance_max": float(finite.max())})
