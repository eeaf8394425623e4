"""Latent reliance by projecting out a prototype's centred subspace at the target layer (a forward
hook, any model): on a planted model that reads only a uniform swatch's shade the swatch's
prototype gets a large reliance where the blur gives about 0, the batched measure equals a
one-image-at-a-time loop, and under the projection the logits no longer move along the planted
direction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_i2x import Reliance
from lightning_i2x.analysis import suspect_basis
from lightning_i2x.measures import prototype_reliance, prototype_subspaces, random_locations
from lightning_i2x.perturb import LatentProjection, project_component

from .test_interventions import MAP, OBJECT, SWATCH, CleanModel, K, hooked_confidence, images, per_prototype_mean

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 5


class LiftedSwatchModel(nn.Module):
    """The swatch model in a D-dimensional feature space: the layer maps each location's mean pixel
    t to ``b + t u`` (u a unit direction, b an offset), the head reads ``u . (f - b)`` at location
    (0, 0), inside the swatch. The planted direction is u."""

    def __init__(self, scale: float = 4.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        u = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
        b = torch.randn(D, generator=g)
        self.features = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(1, D, 1))
        with torch.no_grad():
            self.features[1].weight.copy_(u.view(D, 1, 1, 1))
            self.features[1].bias.copy_(b)
        self.register_buffer("u", u)
        self.register_buffer("b", b)
        self.scale = scale

    def forward(self, x):
        v = self.scale * ((self.features(x)[:, :, 0, 0] - self.b) @ self.u)
        return torch.stack([v, -v], dim=1)


def test_projection_gives_the_swatch_a_large_reliance_the_blur_misses():
    model = LiftedSwatchModel()
    x, y, a = images("decoy")
    proj = prototype_reliance(model, x, y, a, K, intervention="project", layer=model.features, n_random=4, seed=3)
    blur = prototype_reliance(model, x, y, a, K, fill="blur", n_random=4, seed=3)
    assert proj.intervention == "project" and proj.fill == "mean"
    assert abs(blur.reliance[SWATCH]) < 0.01
    assert proj.drop[SWATCH] > 0.4 and proj.reliance[SWATCH] > 0.25  # measured: drop 0.500, reliance 0.393
    assert int(np.nanargmax(proj.reliance)) == SWATCH
    assert np.abs(proj.drop[list(OBJECT)]).max() < 1e-6  # projecting at the object's cells: the head never reads them
    back = Reliance.from_arrays(proj.to_arrays())
    assert back.intervention == "project"


def test_the_projection_removes_the_planted_direction():
    model = LiftedSwatchModel().eval()
    x, y, a = images("decoy")
    with LatentProjection(model.features) as hook:
        model(x)
        feats = torch.cat(hook.captured)
        hook.captured = []
    bases, refs = prototype_subspaces(feats, a, K, directions=3)
    u = model.u
    # the swatch's subspace is the planted direction (rank 1: the layer's output moves along u only)
    v = bases[SWATCH]
    assert abs(float(u @ v[:, 0])) > 0.999 and bool((v[:, 1:] == 0).all())
    # images whose swatch shade runs from -1 to 1 move the layer's output along u, and the logits with it
    shades = torch.linspace(-1, 1, 5)
    xs = x[:1].repeat(5, 1, 1, 1)
    xs[:, 0, :8, :8] = shades.view(5, 1, 1)
    free = model(xs)
    assert float(free[:, 0].max() - free[:, 0].min()) > 7.9  # 4 x (1 - (-1))
    mask = torch.zeros(5, MAP, MAP, dtype=torch.bool)
    mask[:, :2, :2] = True
    with torch.no_grad(), LatentProjection(model.features) as hook:
        hook.mask, hook.basis, hook.reference = mask, v, refs[SWATCH]
        held = model(xs)
        out = model.features(xs)
    torch.testing.assert_close(held, held[:1].expand_as(held), atol=1e-5, rtol=0)  # no longer moves along u
    # the logit is the reference's: the head reads u . (z - b) at the swatch
    z = refs[SWATCH]
    assert float(held[0, 0]) == pytest.approx(4.0 * float((z - model.b) @ u), abs=1e-5)
    # the locations outside the mask are left bitwise alone
    with torch.no_grad():
        plain = model.features(xs)
    assert torch.equal(out[:, :, 2:], plain[:, :, 2:]) and torch.equal(out[:, :, :2, 2:], plain[:, :, :2, 2:])
    # and the one formula: a - V V^T (a - z)
    a0 = plain[:, :, 0, 0].double()
    vv = v.double()
    want = a0 - (a0 - z.double()) @ vv @ vv.T
    torch.testing.assert_close(out[:, :, 0, 0].double(), want, atol=1e-5, rtol=0)


def brute_force(model, layer, x, y, a, n_random, seed, directions=3):
    """One image, one prototype, one location set at a time: the basis of k from ``suspect_basis``
    on all probe locations, then a hand-written hook that projects location by location."""
    with torch.no_grad():
        store = {}
        handle = layer.register_forward_hook(lambda m, i, out: store.setdefault("f", out))
        model(x)
        handle.remove()
    f = store["f"].permute(0, 2, 3, 1).reshape(-1, store["f"].shape[1]).double().numpy()
    h, w = a.shape[1:]

    def prob(img, c, loc=None, basis=None):
        def hook(mod, i, out):
            o = out.clone()
            for r, col in zip(*np.nonzero(loc.reshape(h, w))):
                vec = out[0, :, r, col].double().numpy()
                new = vec - basis.basis.astype(np.float64) @ (basis.basis.astype(np.float64).T @ (vec - basis.reference))
                o[0, :, r, col] = torch.from_numpy(new).to(out.dtype)
            return o

        return hooked_confidence(model, img, c, layer, hook if loc is not None else None)

    drops, rand = {k: [] for k in range(K)}, {k: [] for k in range(K)}
    with torch.no_grad():
        for k in range(K):
            basis = suspect_basis(f, a.reshape(-1), [k], directions=directions)
            for i in range(x.shape[0]):
                loc = (a[i] == k).ravel()
                if not loc.any():
                    continue
                base = prob(x[i], y[i])
                drops[k].append(base - prob(x[i], y[i], loc, basis))
                draws = random_locations(seed, i, k, int(loc.sum()), n_random, h * w)
                rand[k].append(np.mean([base - prob(x[i], y[i], draws[r], basis) for r in range(n_random)]))
    return per_prototype_mean(drops), per_prototype_mean(rand)


@pytest.mark.parametrize("model_cls", [LiftedSwatchModel, CleanModel])
def test_equals_a_brute_force_loop(model_cls):
    model = model_cls()
    x, y, a = images("decoy" if model_cls is LiftedSwatchModel else "clean", n=12)
    rel = prototype_reliance(model, x, y, a, K, intervention="project", layer=model.features, n_random=2, seed=5, batch_size=7)
    d, r = brute_force(model, model.features, x, y, a, 2, 5)
    np.testing.assert_allclose(rel.drop, d, atol=1e-5)
    np.testing.assert_allclose(rel.random_drop, r, atol=1e-5)


def test_projection_needs_a_layer_and_a_basis():
    model = LiftedSwatchModel()
    x, y, a = images("decoy", n=6)
    with pytest.raises(ValueError, match='intervention="project" needs layer='):
        prototype_reliance(model, x, y, a, K, intervention="project")
    with pytest.raises(ValueError, match="directions"):
        prototype_reliance(model, x, y, a, K, intervention="project", layer=model.features, directions=0)
    with pytest.raises(ValueError, match="needs basis="), LatentProjection(model.features) as hook:
        hook.mask = torch.ones(6, MAP, MAP, dtype=torch.bool)
        model(x)
    with pytest.raises(ValueError, match=r"\(5, r\) or \(2, 5, r\)"):
        project_component(torch.zeros(2, D, 1, 1), torch.zeros(3, 1))
