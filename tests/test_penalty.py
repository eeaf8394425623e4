"""Explanation penalties: RRR's term has its closed form on a linear model; a few optimisation
steps with either penalty lower the explanation mass inside the region; balance_weight; errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_i2x.finetune import balance_weight, gradcam_penalty, input_gradient_penalty

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def test_input_gradient_penalty_closed_form_on_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(16, 3)
    model = nn.Sequential(nn.Flatten(), lin)
    x = torch.randn(5, 1, 4, 4)
    mask = torch.zeros(5, 4, 4, dtype=torch.bool)
    mask[:, :2, :2] = True
    # d/dx sum_c log p_c = sum_c W_c - M sum_j p_j W_j
    w = lin.weight.detach()
    p = torch.softmax(model(x), 1).detach()
    g = w.sum(0)[None] - 3 * p @ w
    expected = ((g.view(5, 1, 4, 4) * mask[:, None]) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(input_gradient_penalty(model, x, None, mask, reduction="none"), expected)
    torch.testing.assert_close(input_gradient_penalty(model, x, None, mask, reduction="sum"), expected.sum())
    out, logits = input_gradient_penalty(model, x, None, mask, return_logits=True)
    torch.testing.assert_close(out, expected.mean())
    assert logits.shape == (5, 3)
    assert all(q.grad is None for q in model.parameters())  # nothing accumulated in .grad


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x):
        return self.head(self.features(x))


def decoy_batch(n=64):
    """Label in a bright top-left block (the decoy) and, more weakly, in the centre."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    sign = (2.0 * y - 1).view(n, 1, 1)
    x[:, 0, :2, :2] += 2 * sign
    x[:, 0, 3:5, 3:5] += 0.5 * sign
    mask = torch.zeros(n, 8, 8, dtype=torch.bool)
    mask[:, :2, :2] = True
    return x, y, mask


def train(penalty, steps=40):
    model = Net()
    x, y, mask = decoy_batch()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(30):  # learn the decoy first
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    before = penalty(model, x, y, mask).item()
    pen, logits = penalty(model, x, y, mask, return_logits=True)
    lam = balance_weight(F.cross_entropy(logits, y), pen, ratio=10.0)
    for _ in range(steps):
        opt.zero_grad()
        pen, logits = penalty(model, x, y, mask, return_logits=True)
        (F.cross_entropy(logits, y) + lam * pen).backward()
        opt.step()
    return before, penalty(model, x, y, mask).item()


def test_input_gradient_penalty_lowers_gradient_mass_in_region():
    before, after = train(input_gradient_penalty)
    assert after < 0.2 * before


def test_gradcam_penalty_lowers_cam_share_in_region():
    def pen(model, x, y, mask, **kw):
        return gradcam_penalty(model, x, y, mask, "features", **kw)

    before, after = train(pen)
    assert 0 <= after < 0.7 * before


def test_gradcam_penalty_mask_resolutions_agree():
    model = Net()
    x, y, mask = decoy_batch(8)
    small = torch.zeros(8, 4, 4)
    small[:, 0, 0] = 1.0  # the same 2x2-pixel block at the layer's resolution
    torch.testing.assert_close(gradcam_penalty(model, x, y, mask, "features"), gradcam_penalty(model, x, y, small, model.features))


def test_balance_weight_and_errors():
    assert balance_weight(2.0, 0.5) == pytest.approx(4.0)
    assert balance_weight(torch.tensor(2.0), torch.tensor(0.5), ratio=0.5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="pen0 > 0"):
        balance_weight(1.0, 0.0)
    model = Net()
    x, y, mask = decoy_batch(4)
    with pytest.raises(TypeError, match="B, C, H, W"):
        input_gradient_penalty(model, x[0], y, mask)
    with pytest.raises(ValueError, match="mask must be"):
        input_gradient_penalty(model, x, y, mask[:2])
    with pytest.raises(ValueError, match="reduction"):
        input_gradient_penalty(model, x, y, mask, reduction="max")
    with pytest.raises(ValueError, match="not a submodule"):
        gradcam_penalty(model, x, y, mask, "nope")
    with pytest.raises(ValueError, match="labels"):
        gradcam_penalty(model, x, y[:2], mask, "features")
    with pytest.raises(ValueError, match="neither"):
        gradcam_penalty(model, x, y, torch.ones(4, 3, 3), "features")
