"""Decoy MNIST construction (Ross et al. 2017) on synthetic images: one 4x4 swatch in a corner,
label-coded shade in training, random shade in test, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoy_data import add_decoy


def test_swatch_in_one_corner_with_label_shade():
    x = torch.zeros(200, 1, 28, 28)
    y = torch.arange(200) % 10
    out, masks = add_decoy(x, y, train=True, seed=3)
    assert masks.shape == (200, 28, 28) and masks.dtype == bool
    assert (masks.sum((1, 2)) == 16).all()
    corners = set()
    for i in range(200):
        r, c = np.nonzero(masks[i])
        assert r.max() - r.min() == 3 and c.max() - c.min() == 3
        assert r.min() in (0, 24) and c.min() in (0, 24)
        corners.add((r.min(), c.min()))
        shade = (255 - 25 * int(y[i])) / 255
        torch.testing.assert_close(out[i, 0][torch.from_numpy(masks[i])], torch.full((16,), (shade - 0.5) / 0.5))
        assert (out[i, 0][~torch.from_numpy(masks[i])] == 0).all()  # the rest untouched
    assert len(corners) == 4
    again, masks2 = add_decoy(x, y, train=True, seed=3)
    assert torch.equal(again, out) and np.array_equal(masks, masks2)
    assert torch.equal(x, torch.zeros_like(x))  # input not modified


def test_test_rule_shade_is_independent_of_label():
    x = torch.zeros(4000, 1, 28, 28)
    y = torch.arange(4000) % 10  # every label: a shade that followed the label would show
    out, masks = add_decoy(x, y, train=False, seed=0)
    values = out[:, 0][torch.from_numpy(masks)].view(4000, 16)[:, 0]
    digits = torch.round((255 - (values * 0.5 + 0.5) * 255) / 25).long()
    assert digits.min() >= 0 and digits.max() <= 9
    joint = torch.zeros(10, 10)  # label x shade counts, 400 images a label: about 40 a cell if independent
    joint.index_put_((y, digits), torch.ones(4000), accumulate=True)
    assert (joint > 15).all() and (joint < 75).all()
    assert (digits == y).float().mean() < 0.15  # chance is 0.1; the training rule would give 1


def test_bad_input():
    with pytest.raises(ValueError, match="N, 1, H, W"):
        add_decoy(torch.zeros(3, 28, 28), torch.zeros(3), train=True)
    with pytest.raises(ValueError, match="labels"):
        add_decoy(torch.zeros(3, 1, 28, 28), torch.zeros(2), train=True)
