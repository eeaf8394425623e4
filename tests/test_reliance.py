"""Prototype reliance: a planted dependence is found; the batched measure equals a brute-force loop
over images and prototypes; bad input is refused early; the model and the RNGs are left alone."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from lightning_i2x import Reliance
from lightning_i2x.measures import prototype_reliance, random_locations
from lightning_i2x.perturb import blur, default_sigma, pixel_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")




class CornerModel(nn.Module):
    """8x8 images -> 4x4 block means -> linear that reads only block (1, 1) (pixels 2:4, 2:4)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[0, 5], self.fc.weight[1, 5] = 1.0, -1.0

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


def planted(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % 2
    x[:, 0, 2:4, 2:4] = torch.where(y == 0, 2.0, -2.0).view(n, 1, 1)
    a = 1 + (np.arange(16)[None, :] + np.arange(n)[:, None]) % 3  # prototypes 1-3 everywhere else
    a = a.reshape(n, 4, 4)
    a[:, 1, 1] = 0  # prototype 0 = the block the model reads
    return x, y, a


@pytest.mark.parametrize("fill", ["blur", "baseline"])
def test_planted_region_has_top_reliance(fill):
    x, y, a = planted()
    rel = prototype_reliance(CornerModel(), x, y, a, 4, fill=fill, n_random=3)
    assert int(np.nanargmax(rel.reliance)) == 0
    assert rel.reliance[0] > 0.1
    # hiding the other prototypes leaves the block the model reads untouched: no drop at all
    assert np.abs(rel.drop[1:]).max() < 1e-6 and np.all(rel.reliance[1:] <= 1e-6)
    assert rel.count.tolist() == [40, 40, 40, 40] and rel.area[0] == 1.0
    assert np.all(rel.class_count[0] == 20)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(6 * 16, 3))

    def forward(self, x):
        return self.head(self.features(x))


def brute_force(model, x, y, a, k_count, n_random, seed):
    """One image and one prototype at a time, the fill computed per image."""
    model.eval()
    sigma = default_sigma((8, 8), (4, 4))
    drops = {k: [] for k in range(k_count)}
    rand = {k: [] for k in range(k_count)}
    with torch.no_grad():
        def p(img, c):
            return torch.softmax(model(img[None]), 1)[0, c].item()

        for i in range(x.shape[0]):
            base = p(x[i], y[i])
            filled = blur(x[i : i + 1], sigma)[0]
            for k in range(k_count):
                loc = a[i] == k
                if not loc.any():
                    continue
                m = torch.from_numpy(pixel_mask(loc, (8, 8)))
                drops[k].append(base - p(torch.where(m, filled, x[i]), y[i]))
                draws = random_locations(seed, i, k, int(loc.sum()), n_random, 16)
                rs = []
                for r in range(n_random):
                    mr = torch.from_numpy(pixel_mask(draws[r].reshape(4, 4), (8, 8)))
                    rs.append(base - p(torch.where(mr, filled, x[i]), y[i]))
                rand[k].append(np.mean(rs))
    d = np.array([np.mean(drops[k]) if drops[k] else np.nan for k in range(k_count)])
    r = np.array([np.mean(rand[k]) if rand[k] else np.nan for k in range(k_count)])
    return d, r


def test_equals_brute_force_loop():
    torch.manual_seed(0)
    x = torch.randn(12, 1, 8, 8)
    y = torch.randint(0, 3, (12,))
    a = np.random.default_rng(1).integers(0, 5, size=(12, 4, 4))
    a[a == 4] = 3  # prototype 4 present nowhere
    model = Small()
    # the blur (the brute force below blurs; the default resampling fill is checked in test_interventions)
    rel = prototype_reliance(model, x, y, a, 5, fill="blur", n_random=2, seed=7, batch_size=5)
    d, r = brute_force(model, x, y, a, 5, 2, 7)
    np.testing.assert_allclose(rel.drop, d, atol=1e-6)
    np.testing.assert_allclose(rel.random_drop, r, atol=1e-6)
    np.testing.assert_allclose(rel.reliance, d - r, atol=1e-6)
    assert rel.count[4] == 0 and np.isnan(rel.reliance[4]) and np.isnan(rel.class_reliance[4]).all()
    # the batch size changes nothing
    rel2 = prototype_reliance(model, x, y, a, 5, fill="blur", n_random=2, seed=7, batch_size=256)
    np.testing.assert_allclose(rel2.reliance, rel.reliance, atol=1e-6, equal_nan=True)
    # per class means agree with the overall mean weighted by counts
    cc = rel.class_count.astype(float)
    np.testing.assert_allclose(np.nansum(rel.class_drop * cc, 1)[:4] / cc.sum(1)[:4], rel.drop[:4], atol=1e-9)


def test_max_images_per_prototype_caps_counts():
    x, y, a = planted()
    rel = prototype_reliance(CornerModel(), x, y, a, 4, n_random=1, max_images_per_prototype=7)
    assert rel.count.tolist() == [7, 7, 7, 7]


def test_no_side_effects():
    model = Small()
    model.train()
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    bn = model.features[1].running_mean.clone()
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    x, y, a = planted(10)
    prototype_reliance(model, x, y % 2, a, 4, fill="noise", n_random=2)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert torch.equal(model.features[1].running_mean, bn)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist() and random.getstate() == py_state


def test_round_trip_through_npz(tmp_path):
    x, y, a = planted(10)
    rel = prototype_reliance(CornerModel(), x, y, a, 5, n_random=1)
    np.savez(tmp_path / "r.npz", **rel.to_arrays())
    back = Reliance.from_arrays(np.load(tmp_path / "r.npz"))
    for k in Reliance._ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(rel, k))
    assert (back.fill, back.n_random, back.seed) == (rel.fill, rel.n_random, rel.seed)
    with pytest.raises(ValueError, match="lack"):
        Reliance.from_arrays({"drop": rel.drop})


def test_bad_input():
    x, y, a = planted(6)
    m = CornerModel()
    with pytest.raises(TypeError, match="B, C, H, W"):
        prototype_reliance(m, x[0], y, a, 4)
    with pytest.raises(ValueError, match="labels"):
        prototype_reliance(m, x, y[:3], a, 4)
    with pytest.raises(ValueError, match="assignment must be"):
        prototype_reliance(m, x, y, a[:3], 4)
    with pytest.raises(ValueError, match=r"ids must lie"):
        prototype_reliance(m, x, y, a, 2)
    with pytest.raises(ValueError, match="integer prototype ids"):
        prototype_reliance(m, x, y, a.astype(float), 4)
    with pytest.raises(ValueError, match="fill"):
        prototype_reliance(m, x, y, a, 4, fill="zeros")
    with pytest.raises(ValueError, match="n_random"):
        prototype_reliance(m, x, y, a, 4, n_random=0)
    with pytest.raises(ValueError, match="max_images_per_prototype"):
        prototype_reliance(m, x, y, a, 4, max_images_per_prototype=0)
    with pytest.raises(ValueError, match="labels must lie"):
        prototype_reliance(m, x, y + 5, a, 4, num_classes=2)
