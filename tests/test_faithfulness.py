"""Deletion and insertion: batched equals a per-image, per-step loop; planted ground truth; the
Quantus and pytorch-grad-cam implementations agree; no side effects; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_i2x.measures import (
    FaithfulnessResult,
    deletion_insertion,
    random_baseline,
    random_maps,
)
from lightning_i2x.perturb import default_blur_sigma, fill_values

from .conftest import global_rng_untouched, trained_tiny_cnn

REGION = (slice(8, 14), slice(16, 22))  # the only pixels the planted model reads (28 x 28 images)


pytestmark = pytest.mark.usefixtures("one_torch_thread")




class RegionModel(nn.Module):
    """Class 0's logit is a checkerboard's correlation with pixels REGION only, the other nine logits
    are 0: blurring or deleting the region (and nothing else) brings class 0 down to chance."""

    def __init__(self, gain: float = 12.0):
        super().__init__()
        checker = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2 * 2.0 - 1.0
        self.register_buffer("checker", checker)
        self.scale = nn.Parameter(torch.tensor(gain))  # one parameter, so the model has a device and a dtype

    def forward(self, x):
        s = (x[:, 0, REGION[0], REGION[1]] * self.checker).mean(dim=(1, 2)) * self.scale
        return torch.cat([s[:, None], torch.zeros(x.shape[0], 9, dtype=x.dtype, device=x.device)], dim=1)


def planted_images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    checker = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2 * 2.0 - 1.0
    x[:, 0, REGION[0], REGION[1]] = checker
    return x


def region_map(n, size=(28, 28), noise_seed=None):
    m = torch.zeros(n, 28, 28)
    m[:, REGION[0], REGION[1]] = 1.0
    if noise_seed is not None:  # break ties inside and outside the region
        m = m + 1e-3 * torch.rand(m.shape, generator=torch.Generator().manual_seed(noise_seed))
    return F.interpolate(m[:, None], size=size, mode="area")[:, 0] if size != (28, 28) else m


def brute_force(model, images, targets, maps, steps, fill="blur", sigma=None):
    """One image, one step, one forward at a time, ordering by NumPy's stable argsort."""
    model.eval()
    h, w = images.shape[-2:]
    n = h * w
    sigma = default_blur_sigma((h, w)) if sigma is None else sigma
    dele, ins = [], []
    for b in range(images.shape[0]):
        x = images[b : b + 1]
        filled = fill_values(x, fill, sigma=sigma)
        up = F.interpolate(maps[b][None, None].double(), size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy().ravel()
        order = np.argsort(-up, kind="stable")
        d_row, i_row = [], []
        for k in range(steps + 1):
            count = int(np.floor(k * n / steps + 0.5))
            hidden = np.zeros(n, dtype=bool)
            hidden[order[:count]] = True
            hidden = torch.from_numpy(hidden.reshape(h, w))
            with torch.no_grad():
                xd = torch.where(hidden, filled, x)
                xi = torch.where(hidden, x, filled)
                d_row.append(torch.softmax(model(xd), 1)[0, int(targets[b])].item())
                i_row.append(torch.softmax(model(xi), 1)[0, int(targets[b])].item())
        dele.append(d_row)
        ins.append(i_row)
    xs = np.array([np.floor(k * n / steps + 0.5) / n for k in range(steps + 1)])
    dele, ins = np.array(dele), np.array(ins)
    return dele, ins, np.trapezoid(dele, xs, axis=1), np.trapezoid(ins, xs, axis=1)


@pytest.fixture(scope="module")
def trained_tiny(digits):
    return trained_tiny_cnn(digits, 40)


@pytest.mark.parametrize("steps,map_size,fill", [(7, (4, 4), "blur"), (10, (8, 8), "baseline"), (1, (2, 3), "blur")])
def test_equals_brute_force_loop(digits, trained_tiny, steps, map_size, fill):
    x, y = digits[1].tensors
    x, y = x[:9], y[:9]
    maps = torch.rand(9, *map_size, generator=torch.Generator().manual_seed(1))
    maps[0] = 0.5  # a constant map: all ties, broken by pixel index
    res = deletion_insertion(trained_tiny, x, y, maps, steps=steps, fill=fill, sigma=1.5, batch_size=13)
    d, i, da, ia = brute_force(trained_tiny, x, y, maps, steps, fill=fill, sigma=1.5)
    assert isinstance(res, FaithfulnessResult)
    assert res.deletion_curves.shape == res.insertion_curves.shape == (9, steps + 1)
    assert np.abs(res.deletion_curves.numpy() - d).max() < 1e-6
    assert np.abs(res.insertion_curves.numpy() - i).max() < 1e-6
    assert np.abs(res.deletion_auc.numpy() - da).max() < 1e-6
    assert np.abs(res.insertion_auc.numpy() - ia).max() < 1e-6
    assert res.fractions[0] == 0 and res.fractions[-1] == 1
    # the deletion curve ends where the insertion curve starts (one fill for both) and vice versa
    assert torch.allclose(res.deletion_curves[:, -1], res.insertion_curves[:, 0], atol=1e-6)
    assert torch.allclose(res.deletion_curves[:, 0], res.insertion_curves[:, -1], atol=1e-6)


def test_batch_size_does_not_change_the_result(digits, trained_tiny):
    x, y = digits[1].tensors
    maps = torch.rand(20, 4, 4, generator=torch.Generator().manual_seed(2))
    a = deletion_insertion(trained_tiny, x[:20], y[:20], maps, steps=16, batch_size=1000)
    b = deletion_insertion(trained_tiny, x[:20], y[:20], maps, steps=16, batch_size=7)
    assert torch.allclose(a.deletion_curves, b.deletion_curves, atol=1e-6)
    assert torch.allclose(a.insertion_auc, b.insertion_auc, atol=1e-6)


def test_planted_region_deleted_first_is_steep_random_is_not():
    model = RegionModel(gain=6.0).eval()  # original probability 0.98, chance 0.1
    x = planted_images()
    y = torch.zeros(6, dtype=torch.long)
    for size in [(28, 28), (7, 7)]:  # at pixel and at feature resolution
        good = deletion_insertion(model, x, y, region_map(6, size), steps=28)
        rand = random_baseline(model, x, y, seed=3, steps=28)
        chance = 0.1  # class 0's probability when its logit is 0, as the other nine
        assert (good.deletion_curves[:, 0] > 0.97).all()
        assert torch.allclose(good.deletion_curves[:, 2:], torch.tensor(chance, dtype=torch.float64), atol=1e-4)
        assert good.deletion_auc.max() < chance + 0.03  # at the floor once the region's 36 of 784 pixels are gone
        assert rand.deletion_auc.min() > 0.45
        assert good.insertion_auc.min() > 0.95  # the mirror image
        assert rand.insertion_auc.max() < 0.75
    # reversing the order is the worst case
    bad = deletion_insertion(model, x, y, -region_map(6), steps=28)
    assert bad.mean_deletion_auc > rand.mean_deletion_auc and bad.mean_insertion_auc < rand.mean_insertion_auc


def test_random_maps_seeded_and_rng_untouched():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = random_maps(2, (5, 6), seed=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(a, random_maps(2, (5, 6), seed=1)) and not torch.equal(a, random_maps(2, (5, 6), seed=2))


@pytest.mark.parametrize("fill", ["blur", "noise", "random"])
def test_no_side_effects(digits, trained_tiny, fill):
    model = trained_tiny
    model.train()
    model.features[1].eval()  # a mixed mode must survive
    x, y = digits[1].tensors
    F.cross_entropy(model(x[:8]), y[:8]).backward()
    modes = [m.training for m in model.modules()]
    grads = [p.grad.clone() for p in model.parameters()]
    req = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with global_rng_untouched():
        first = deletion_insertion(model, x[:5], y[:5], torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(0)), steps=5, fill=fill)
        random_baseline(model, x[:5], y[:5], steps=5, fill=fill)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert [p.requires_grad for p in model.parameters()] == req
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BatchNorm statistics too
    again = deletion_insertion(model, x[:5], y[:5], torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(0)), steps=5, fill=fill)
    assert torch.equal(first.deletion_curves, again.deletion_curves)  # seeded fills: reproducible
    for p in model.parameters():
        p.grad = None
    model.eval()


def test_bad_input_errors(digits, trained_tiny):
    x, y = digits[1].tensors
    x, y = x[:4], y[:4]
    maps = torch.rand(4, 4, 4)
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion(trained_tiny, x, y, maps, steps=0)
    with pytest.raises(ValueError, match="4 images but 3 maps"):
        deletion_insertion(trained_tiny, x, y, maps[:3])
    with pytest.raises(ValueError, match="maps must be"):
        deletion_insertion(trained_tiny, x, y, maps[:, None])
    with pytest.raises(ValueError, match="images must be"):
        deletion_insertion(trained_tiny, x[:, 0], y, maps)
    with pytest.raises(ValueError, match="targets"):
        deletion_insertion(trained_tiny, x, y[:3], maps)
    with pytest.raises(ValueError, match="targets"):
        deletion_insertion(trained_tiny, x, y.float(), maps)
    with pytest.raises(ValueError, match="fill"):
        deletion_insertion(trained_tiny, x, y, maps, fill="zeros")
    with pytest.raises(ValueError, match="NaN"):
        deletion_insertion(trained_tiny, x, y, maps * float("nan"))


def test_agrees_with_quantus_pixel_flipping():
    """Quantus' PixelFlipping with a constant baseline (0.0) and 16 pixels a step is our deletion
    curve with fill="baseline", baseline=0.0 and 49 steps of 784 / 49 = 16 pixels, without the
    unperturbed first point."""
    import quantus  # a dev dependency: a broken install fails here, it does not skip
    model = RegionModel(gain=4.0).eval()
    x = planted_images(n=5, seed=1)
    y = torch.zeros(5, dtype=torch.long)
    a = torch.rand(5, 28, 28, generator=torch.Generator().manual_seed(4))  # continuous: no ties to break
    a[:, REGION[0], REGION[1]] += 0.5  # the region comes first, then a random order
    ours = deletion_insertion(model, x, y, a, steps=49, fill="baseline", baseline=0.0)
    metric = quantus.PixelFlipping(features_in_step=16, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(), softmax=True, device="cpu"))
    assert theirs.shape == (5, 49)
    assert np.abs(ours.deletion_curves[:, 1:].numpy() - theirs).max() < 1e-5
    model.eval()


def test_direction_agrees_with_pytorch_grad_cam_road(digits, trained_tiny):
    """ROAD (Rong et al. 2022; noisy linear imputation instead of a blur) ranks the planted map
    above a random one in the same direction as deletion and insertion do."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = RegionModel().eval()
    x = planted_images(n=6, seed=2)
    y = torch.zeros(6, dtype=torch.long)
    good, rand = region_map(6, noise_seed=0), random_maps(6, (28, 28), seed=5).float()
    targets = [ClassifierOutputSoftmaxTarget(0) for _ in range(6)]
    torch.manual_seed(0)
    morf_good = ROADMostRelevantFirst(percentile=80)(x, good.numpy(), targets, model).mean()
    morf_rand = ROADMostRelevantFirst(percentile=80)(x, rand.numpy(), targets, model).mean()
    lerf_good = ROADLeastRelevantFirst(percentile=20)(x, good.numpy(), targets, model).mean()
    lerf_rand = ROADLeastRelevantFirst(percentile=20)(x, rand.numpy(), targets, model).mean()
    ours_good = deletion_insertion(model, x, y, good, steps=20)
    ours_rand = deletion_insertion(model, x, y, rand, steps=20)
    # ROAD returns the change in the target score: removing the most relevant 20 % drops it more
    # for the planted map; removing the least relevant 80 % keeps it more.
    assert morf_good < morf_rand
    assert lerf_good > lerf_rand
    assert ours_good.mean_deletion_auc < ours_rand.mean_deletion_auc
    assert ours_good.mean_insertion_auc > ours_rand.mean_insertion_auc
