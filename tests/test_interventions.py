"""Interventions that remove content, on planted truth: a model that reads only the shade of a
uniform corner swatch loses its prediction when the swatch's pixels come from another class's
image (``fill="resample"``) or its feature vectors are swapped at the layer (``"latent"``), while
the blur leaves the shade in place; both equal a brute-force loop. The one blur equals SciPy's.
The suspect rule flags the planted shortcut, nothing on a clean model, abstains on a global cast,
and says why when it flags nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from lightning_i2x import Reliance
from lightning_i2x.analysis import Suspects, intensity_rise, suspect_prototypes, suspect_report
from lightning_i2x.measures import latent_reliance, prototype_reliance, random_locations
from lightning_i2x.options import FILLS, FinetuneOptions
from lightning_i2x.perturb import (
    LatentSwap,
    apply_mask,
    blur,
    fill_values,
    perturb,
    pixel_mask,
    resample_donors,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, SIZE, MAP = 40, 16, 4  # 16x16 images, a 4x4 feature map: 4x4 pixels per location
SWATCH, OBJECT, REST = 0, (1, 2, 3, 4), 5  # prototype ids: the swatch, the object's four cells, the rest
K = 6
PLACES = ((0, 2), (2, 0), (2, 2))  # where the 2x2-location object sits (disjoint, off the swatch)


def layout(n=N, seed=0):
    """(images' object places, assignment): the swatch on locations [0:2, 0:2], the object's four
    cells (one prototype each) at one of PLACES, the rest."""
    rng = np.random.default_rng(seed)
    place = rng.integers(0, len(PLACES), size=n)
    a = np.full((n, MAP, MAP), REST)
    a[:, 0:2, 0:2] = SWATCH
    for i in range(n):
        r, c = PLACES[place[i]]
        a[i, r, c], a[i, r, c + 1], a[i, r + 1, c], a[i, r + 1, c + 1] = OBJECT
    return place, a


def images(kind: str, n=N, seed=0):
    """(x, y, assignment). decoy: swatch shade = class (+-1), object shade random; clean: object
    shade = class, swatch shade random; cast: every pixel offset by +-0.3 by class, no content."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    sign = torch.where(y == 0, 1.0, -1.0)
    rand_sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    x = 0.1 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    place, a = layout(n, seed)
    if kind == "cast":
        return x + 0.3 * sign.view(n, 1, 1, 1), y, a
    swatch, obj = (sign, rand_sign) if kind == "decoy" else (rand_sign, sign)
    x[:, 0, 0:8, 0:8] = swatch.view(n, 1, 1)
    for i in range(n):
        r, c = PLACES[place[i]]
        x[i, 0, 4 * r : 4 * r + 8, 4 * c : 4 * c + 8] = obj[i]
    return x, y, a


class SwatchModel(nn.Module):
    """Logits depend only on the mean of the corner patch (pixels 0:4, 0:4, inside the swatch)."""

    def __init__(self, scale=4.0):
        super().__init__()
        self.features = nn.AvgPool2d(4)  # (B, 1, 4, 4): the target layer, at the assignment's resolution
        self.scale = scale

    def forward(self, x):
        v = self.scale * self.features(x)[:, 0, 0, 0]
        return torch.stack([v, -v], dim=1)


class CleanModel(nn.Module):
    """Logits from the mean of everything but the swatch: reads the object, wherever it is."""

    def __init__(self, scale=48.0):
        super().__init__()
        self.features = nn.AvgPool2d(4)
        w = torch.ones(MAP, MAP)
        w[0:2, 0:2] = 0
        self.register_buffer("w", w / w.sum())
        self.scale = scale

    def forward(self, x):
        v = self.scale * (self.features(x)[:, 0] * self.w).sum((1, 2))
        return torch.stack([v, -v], dim=1)


class CastModel(nn.Module):
    """Logits from the mean brightness of the whole image: a global cast, no place."""

    def __init__(self, scale=10.0):
        super().__init__()
        self.features = nn.AvgPool2d(4)
        self.scale = scale

    def forward(self, x):
        v = self.scale * self.features(x).mean((1, 2, 3))
        return torch.stack([v, -v], dim=1)


def measure(model, kind, **kw):
    x, y, a = images(kind)
    return prototype_reliance(model, x, y, a, K, n_random=4, seed=3, **kw)


# -- the planted swatch: blur misses it, removing content finds it ------------------------------------
def test_resample_and_latent_see_a_uniform_swatch_the_blur_misses():
    model = SwatchModel()
    blur_rel = measure(model, "decoy", fill="blur")
    res = measure(model, "decoy")  # the default: fill="resample"
    lat = latent_reliance(model, model.features, *images("decoy"), K, n_random=4, seed=3)
    assert res.fill == "resample" and res.intervention == "pixels" and lat.intervention == "latent"
    assert abs(blur_rel.reliance[SWATCH]) < 0.01 and abs(blur_rel.drop[SWATCH]) < 0.01
    for rel in (res, lat):
        assert rel.reliance[SWATCH] > 0.5 and rel.drop[SWATCH] > 0.95
        assert int(np.nanargmax(rel.reliance)) == SWATCH
        assert np.abs(rel.drop[list(OBJECT)]).max() < 1e-6  # the model never reads the object
    # a linear pooling layer: swapping its outputs is swapping the pixels' means
    np.testing.assert_allclose(lat.reliance, res.reliance, atol=1e-6)
    # the mean image and random values (over the image's own, one-sided range) remove the shade less completely
    assert measure(model, "decoy", fill="mean").reliance[SWATCH] > 0.3
    assert measure(model, "decoy", fill="random").reliance[SWATCH] > 0.1


def hooked_confidence(model, img, c, layer, hook):
    """softmax(model(img))[c], with ``hook`` (or none) on ``layer``'s output for this one forward."""
    handle = layer.register_forward_hook(hook) if hook is not None else None
    try:
        return torch.softmax(model(img[None]), 1)[0, c].item()
    finally:
        if handle is not None:
            handle.remove()


def per_prototype_mean(values):
    """(K,) the mean of each prototype's list, NaN where a prototype had none."""
    return np.array([np.mean(values[k]) if values[k] else np.nan for k in range(K)])


def brute_force(model, x, y, a, n_random, seed, *, layer=None):
    """One image and one prototype at a time: hide (the donor's pixels, or its features at the
    layer through a hand-written hook), forward, compare; the same for the random draws."""
    donors = resample_donors(y, seed)
    h, w = a.shape[1:]

    def prob(img, c, loc=None, donor=None):
        if layer is None:
            if loc is not None:
                m = torch.from_numpy(pixel_mask(loc.reshape(h, w), tuple(img.shape[-2:])))
                img = torch.where(m, x[int(donor)], img)
            return torch.softmax(model(img[None]), 1)[0, c].item()
        feats = {}
        if loc is not None:
            handle = layer.register_forward_hook(lambda mod, i, out: feats.setdefault("v", out))
            model(x[int(donor)][None])
            handle.remove()

        def swap(mod, i, out):
            return torch.where(torch.from_numpy(loc.reshape(1, 1, h, w)), feats["v"], out)

        return hooked_confidence(model, img, c, layer, swap if loc is not None else None)

    drops = {k: [] for k in range(K)}
    rand = {k: [] for k in range(K)}
    with torch.no_grad():
        for i in range(x.shape[0]):
            base = prob(x[i], y[i])
            for k in range(K):
                loc = (a[i] == k).ravel()
                if not loc.any():
                    continue
                drops[k].append(base - prob(x[i], y[i], loc, donors[i]))
                draws = random_locations(seed, i, k, int(loc.sum()), n_random, h * w)
                rand[k].append(np.mean([base - prob(x[i], y[i], draws[r], donors[i]) for r in range(n_random)]))
    return per_prototype_mean(drops), per_prototype_mean(rand)


@pytest.mark.parametrize("model_cls", [SwatchModel, CleanModel])
@pytest.mark.parametrize("intervention", ["pixels", "latent"])
def test_equal_a_brute_force_loop(model_cls, intervention):
    model = model_cls()
    x, y, a = images("decoy" if model_cls is SwatchModel else "clean", n=12)
    layer = model.features if intervention == "latent" else None
    rel = prototype_reliance(model, x, y, a, K, intervention=intervention, layer=layer, n_random=2, seed=5, batch_size=7)
    d, r = brute_force(model, x, y, a, 2, 5, layer=layer)
    np.testing.assert_allclose(rel.drop, d, atol=1e-6)
    np.testing.assert_allclose(rel.random_drop, r, atol=1e-6)
    np.testing.assert_allclose(rel.reliance, d - r, atol=1e-6)


def test_latent_needs_a_matching_layer():
    model = SwatchModel()
    x, y, a = images("decoy", n=6)
    with pytest.raises(ValueError, match="needs layer"):
        prototype_reliance(model, x, y, a, K, intervention="latent")
    with pytest.raises(ValueError, match="intervention must be"):
        prototype_reliance(model, x, y, a, K, intervention="features")
    other = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 2))  # its pooling outputs an 8x8 map
    with pytest.raises(ValueError, match=r"\(6, C, 4, 4\)"):
        prototype_reliance(other, x, y, a, K, intervention="latent", layer=other[0])


# -- fills and the one blur ----------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "sigma"), [((2, 9, 7), 1.0), ((1, 8, 8), 2.0), ((3, 5, 4), 2.5), ((1, 3, 3), 2.0), ((1, 28, 28), 6.25)])
def test_both_blurs_equal_scipy(shape, sigma):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = gaussian_filter(x.numpy(), (0, sigma, sigma), mode="reflect", truncate=3.0)
    np.testing.assert_allclose(blur(x[None], sigma)[0].numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(fill_values(x[None], "blur", sigma=sigma)[0].numpy(), ref, atol=1e-12)
    everywhere = np.ones(shape[1:], dtype=bool)
    np.testing.assert_allclose(perturb(x, everywhere, "blur", sigma=sigma).numpy(), ref, atol=1e-12)
    xf = x.float()
    np.testing.assert_allclose(perturb(xf, everywhere, "blur", sigma=sigma).numpy(), ref, atol=1e-5)


def test_fill_names_are_appended():
    assert FILLS[:4] == ("blur", "noise", "baseline", "random") and {"mean", "resample"} <= set(FILLS)
    x, y, a = images("decoy", n=6)
    rel = prototype_reliance(SwatchModel(), x, y, a, K, n_random=1)
    back = Reliance.from_arrays(rel.to_arrays())
    assert (back.fill, back.intervention) == ("resample", "pixels")
    old = {k: v for k, v in rel.to_arrays().items() if k != "intervention"}
    old["fill"] = np.asarray(0)  # a file written before: "blur", no intervention
    assert (Reliance.from_arrays(old).fill, Reliance.from_arrays(old).intervention) == ("blur", "pixels")


def test_resample_donors_and_fills():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    d = resample_donors(y, seed=4)
    assert (y[d] != y).all() and np.array_equal(d, resample_donors(y, seed=4))
    assert resample_donors([7, 7, 7], 0).tolist() != [0, 1, 2] and resample_donors([1], 0).tolist() == [0]
    x = torch.randn(8, 2, 5, 5)
    np.testing.assert_array_equal(fill_values(x, "resample", labels=y, seed=4).numpy(), x[torch.as_tensor(d)].numpy())
    np.testing.assert_allclose(fill_values(x, "mean")[3].numpy(), x.mean(0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        fill_values(x, "resample")
    # one image: the same fill given its donor
    mask = np.zeros((5, 5), bool)
    mask[1:3, 2:] = True
    out = perturb(x[0], mask, "resample", reference=x[d[0]])
    want = apply_mask(x[:1], torch.from_numpy(mask)[None], x[d[0]][None])[0]
    assert torch.equal(out, want)
    with pytest.raises(ValueError, match="reference"):
        perturb(x[0], mask, "resample")
    # the mask repair takes the content-removing fills too (tests/test_counterexamples.py)
    assert FinetuneOptions(mode="mask", mask_fill="resample").mask_fill == "resample"


def test_latent_swap_hook_is_removed():
    layer = nn.Identity()
    with LatentSwap(layer) as swap:
        layer(torch.zeros(2, 3, 4, 4))
        assert len(swap.captured) == 1
    assert not layer._forward_hooks


# -- the rule on measured reliance -------------------------------------------------------------------
def saliency(kind, t=3):
    """(T, N, K) intensities: GradCAM on the swatch (decoy, rising at the first interval) or on the
    object (clean, rising at the last); the rest low."""
    it = np.full((t, N, K), 0.1)
    if kind == "decoy":
        it[1:, :, SWATCH] = 0.9
        it[-1, :, list(OBJECT)] = 0.5
    else:
        it[-1, :, list(OBJECT)] = 0.9
    return it


def test_rule_flags_the_planted_shortcut():
    x, y, a = images("decoy")
    rel = measure(SwatchModel(), "decoy")
    assert suspect_prototypes(rel, a, y.numpy(), intensities=saliency("decoy")) == [SWATCH]
    assert suspect_prototypes(rel, a) == [SWATCH]
    # the training-time criterion: the swatch's saliency rose at the first interval
    rise = intensity_rise(saliency("decoy"))
    assert rise[SWATCH] == 0.5 and rise[OBJECT[0]] == 1.0
    assert suspect_prototypes(rel, a, intensities=saliency("decoy"), max_rise=0.5) == [SWATCH]
    assert suspect_prototypes(rel, a, intensities=saliency("decoy"), max_rise=0.25) == []
    # the position prior, now optional, agrees here (a corner swatch)
    assert suspect_prototypes(rel, a, position=True) == [SWATCH]
    rep = suspect_report(rel, a)
    assert rep.verdict == "suspects" and "P-0" in rep.summary()


def test_rule_flags_nothing_on_a_clean_model():
    x, y, a = images("clean")
    rel = measure(CleanModel(), "clean")
    assert np.nanmax(rel.reliance) < 0.02  # each object cell is redundant with the other three
    rep = suspect_report(rel, a, y.numpy(), intensities=saliency("clean"))
    assert rep.suspects == () and rep.verdict == "none"


def test_rule_abstains_on_a_global_cast():
    x, y, a = images("cast")
    rel = measure(CastModel(), "cast")
    assert rel.drop[SWATCH] > 0.03 and abs(rel.reliance[SWATCH]) < 0.01  # costs as much as hiding anywhere
    rep = suspect_report(rel, a, y.numpy())
    assert rep.suspects == () and rep.verdict == "not localised"
    assert "not localised" in rep.summary()


def test_no_suspect_report_names_candidates_and_failed_criteria():
    x, y, a = images("decoy")
    rel = measure(SwatchModel(), "decoy", fill="blur")
    rep = suspect_report(rel, a, y.numpy(), intensities=saliency("decoy"))
    assert rep.suspects == () and rep.verdict == "none" and "blur" in rep.note
    first = rep.candidates[0]
    failed = {c.name: c for c in first.failed}
    assert "reliance" in failed and failed["reliance"].threshold == 0.02
    assert abs(failed["reliance"].value - rel.reliance[first.prototype]) < 1e-12
    text = rep.summary()
    assert text.startswith("none; strongest candidates: P-") and "failed reliance" in text and "< 0.02" in text
    assert len(rep.candidates) == 3
    s = Suspects(rep)
    assert s == () and s.report is rep


def test_run_report_in_markdown_and_summary(tmp_path):
    from lightning_i2x import I2XRun
    from lightning_i2x.__main__ import reliance_summary

    from .test_shortcut_finetune import planted_run

    planted_run(tmp_path / "clean", False)
    run = I2XRun.load(tmp_path / "clean")
    rep = run.suspect_report()
    assert rep.suspects == () and rep.candidates[0].prototype == 1
    assert [c.name for c in rep.candidates[0].failed] == ["per location"]  # relied on, but spread over 4 locations
    md = run.explain().to_markdown()
    assert "## Suspected shortcuts" in md and "P-1 failed per location 0.075 < 0.1" in md
    assert "P-1 failed per location" in reliance_summary(run)
    planted_run(tmp_path / "decoy", True)
    assert "P-0: relied on" in I2XRun.load(tmp_path / "decoy").explain().to_markdown()
