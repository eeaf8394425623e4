"""Structured attention graphs: planted sufficient cues are found, the beam search reaches the
exhaustive optimum on tiny cases, the floor rule, JSON round trip, the figure, no side effects."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_i2x.measures import SAG, diverse_mses, grid_regions, minimal_sufficient_explanations, mse_stats, sag, sag_blur_sigma
from lightning_i2x.perturb import apply_mask, fill_values, pixel_mask, target_probabilities
from lightning_i2x.viz import to_rgb

from .conftest import TinyCNN


# -- planted models -------------------------------------------------------------------------------------
class TwoCue(nn.Module):
    """16 x 16 images on a 4 x 4 grid of 4 px cells: class-1 logit = k (max(mean of cell 0, mean of
    cell 15) - 0.75), class 0 logit = 0: either bright corner cell alone suffices."""

    def __init__(self, k: float = 40.0):
        super().__init__()
        self.pool = nn.Conv2d(1, 1, 4, stride=4, bias=False)
        with torch.no_grad():
            self.pool.weight.fill_(1 / 16)
        self.k = k

    def forward(self, x):
        m = self.pool(x)[:, 0]
        s = torch.maximum(m[:, 0, 0], m[:, 3, 3])
        return torch.stack([torch.zeros_like(s), self.k * (s - 0.75)], 1)


class CellIndicators(nn.Module):
    """Class-1 logit = sum_c w_c e_c + b, e_c = 1 when a pixel of cell c is exactly 1.0 (unblurred:
    a blur never keeps a lone 1.0 at 1.0 among zeros), else 0; so every shown set's probability is
    known in closed form, sigmoid(sum_{c shown} w_c + b)."""

    def __init__(self, weights: dict[int, float], bias: float, grid: int = 4, cell: int = 4):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(grid * grid))
        with torch.no_grad():
            for c, v in weights.items():
                self.w[c] = v
        self.b, self.grid, self.cell = bias, grid, cell

    def forward(self, x):
        hit = (x[:, 0] >= 0.999).to(x.dtype)
        e = F.max_pool2d(hit[:, None], self.cell)[:, 0].flatten(1)  # (B, grid*grid)
        s = e @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


def _cells_image(cells, grid=4, cell=4):
    img = torch.zeros(1, grid * cell, grid * cell)
    for c in cells:
        r, q = divmod(c, grid)
        img[:, r * cell : (r + 1) * cell, q * cell : (q + 1) * cell] = 1.0
    return img


def _sigmoid(v):
    return 1 / (1 + math.exp(-v))


# -- planted cues ---------------------------------------------------------------------------------------
def test_two_independent_cues_are_two_disjoint_mses_of_size_one():
    img = _cells_image([0, 15])
    g = sag(TwoCue(), img, 1)
    assert g.full_probability > 0.99 and g.baseline_probability < 0.05
    assert set(g.mses) == {(0,), (15,)}
    assert set(g.all_mses) == {(0,), (15,)}
    assert all(n.is_root for n in g.nodes) and not g.edges  # size-1 roots have no children
    assert g.describe((0,)) == "r0c0" and g.describe((0, 15)) == "r0c0 + r3c3"


def test_one_cue_is_one_mse():
    g = sag(TwoCue(), _cells_image([0]), 1)
    assert g.mses == ((0,),) and g.all_mses == ((0,),)
    res = minimal_sufficient_explanations(TwoCue(), _cells_image([15]), 1)
    assert [m for m, _ in res.mses] == [(15,)] and res.mses[0][1] >= 0.9 * res.full_probability


def test_region_map_ids_are_the_prototype_ids():
    # a prototype-style map at feature resolution (4 x 4 here): ids name the regions
    assignment = np.full((4, 4), 7, dtype=np.int64)
    assignment[0, 0], assignment[3, 3] = 3, 17
    g = sag(TwoCue(), _cells_image([0, 15]), 1, regions=assignment)
    assert set(g.mses) == {(3,), (17,)} and g.describe((3, 17)) == "P-3 + P-17"
    assert g.region_kind == "map" and np.array_equal(np.asarray(g.region_map), assignment)


def test_mse_stats_on_planted_images():
    x = torch.stack([_cells_image([0, 15]), _cells_image([0]), _cells_image([15]), _cells_image([0, 15])])
    stats = mse_stats(TwoCue(), x, [1, 1, 1, 1])
    assert stats["multi_mse_share"] == 0.5 and stats["mean_mse_size"] == 1.0 and stats["found_share"] == 1.0
    assert stats["mean_num_mses"] == 1.5 and stats["n_images"] == 4 and stats["evaluations_per_image"] > 16
    # one map for all, or one per image, give the same
    per_image = mse_stats(TwoCue(), x, torch.ones(4, dtype=torch.long), np.stack([grid_regions((16, 16))] * 4))
    assert per_image == stats


# -- beam search against exhaustive search --------------------------------------------------------------
def _brute_probabilities(model, image, label, region_map, max_size):
    """Every subset of at most max_size regions scored directly (same fill code, no search)."""
    ids = [int(v) for v in np.unique(region_map)]
    masks = pixel_mask(region_map[None] == np.asarray(ids)[:, None, None], tuple(image.shape[1:]))
    values = fill_values(image[None], "blur", sigma=sag_blur_sigma(tuple(image.shape[1:])))
    subsets = [frozenset(c) for k in range(max_size + 1) for c in itertools.combinations(range(len(ids)), k)]
    shown = torch.from_numpy(np.stack([masks[list(s)].any(0) if s else np.zeros(masks.shape[1:], bool) for s in subsets]))
    x = apply_mask(image[None].expand(len(subsets), -1, -1, -1), ~shown, values.expand(len(subsets), -1, -1, -1))
    p = target_probabilities(model, x, torch.full((len(subsets),), label)).tolist()
    full = float(target_probabilities(model, image[None], torch.tensor([label]))[0])
    return ids, dict(zip(subsets, p)), full


def _exhaustive_minimal(probs, threshold):
    suff = {s: p >= threshold for s, p in probs.items()}
    return {s for s, ok in suff.items() if ok and not any(suff[frozenset(t)] for k in range(len(s)) for t in itertools.combinations(s, k))}


_TRAINED: dict = {}


def _trained(digits):
    if "state" not in _TRAINED:
        torch.manual_seed(0)
        model = TinyCNN()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x, y = digits[0].tensors
        for i in range(60):
            sl = slice((i * 64) % 1400, (i * 64) % 1400 + 64)
            opt.zero_grad()
            F.cross_entropy(model(x[sl]), y[sl]).backward()
            opt.step()
        _TRAINED["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    model = TinyCNN()
    model.load_state_dict(_TRAINED["state"])
    return model.eval()


def test_beam_search_finds_the_exhaustive_optimum_on_a_trained_cnn(digits):
    model = _trained(digits)
    x, y = digits[1].tensors
    rm = grid_regions((8, 8), 3)  # 9 regions; every set of at most 4: 256 subsets
    checked = 0
    for i in range(8):
        ids, probs, full = _brute_probabilities(model, x[i], int(y[i]), rm, 4)
        thr = 0.9 * full
        truth = _exhaustive_minimal(probs, thr)
        res = minimal_sufficient_explanations(model, x[i], int(y[i]), rm, beam_width=10_000, max_size=4, max_roots=10_000,
                                              size_slack=None)
        found = {frozenset(m) for m, _ in res.mses}
        assert truth <= found  # every minimal sufficient set (an unbounded beam sees all their subsets)
        for m, p in res.mses:  # and all it returns are sufficient and 1-minimal
            assert abs(p - probs[frozenset(m)]) < 1e-5 and p >= thr
            assert all(probs[frozenset(m) - {r}] < thr for r in m)
        if truth:
            checked += 1
            smallest = min(len(s) for s in truth)
            assert min(len(m) for m, _ in res.mses) == smallest
            # size_slack: the search stops that many sizes past the smallest MSE, and misses none up to there
            for slack in (0, 1):
                bounded = minimal_sufficient_explanations(model, x[i], int(y[i]), rm, beam_width=10_000, max_size=4,
                                                          max_roots=10_000, size_slack=slack)
                got = {frozenset(m) for m, _ in bounded.mses}
                assert {s for s in truth if len(s) <= smallest + slack} <= got <= found
                assert all(len(m) <= smallest + slack for m in got)
                assert bounded.evaluations <= res.evaluations
            # the authors' beam width 3 reaches the same smallest size here
            narrow = minimal_sufficient_explanations(model, x[i], int(y[i]), rm, max_size=4)
            assert narrow.mses and min(len(m) for m, _ in narrow.mses) == min(len(s) for s in truth)
    assert checked >= 3  # the case is not vacuous


def test_beam_search_equals_exhaustive_on_a_monotone_planted_model():
    # a noisy-OR of three cue cells with unequal weights: shown more, never less probable
    model = CellIndicators({0: 2.5, 5: 2.5, 10: 1.5, 15: 1.0}, bias=-3.0)
    img = _cells_image([0, 5, 10, 15])
    rm = grid_regions((16, 16), 4)
    ids, probs, full = _brute_probabilities(model, img, 1, rm, 4)
    truth = {tuple(sorted(ids[r] for r in s)) for s in _exhaustive_minimal(probs, 0.9 * full)}
    res = minimal_sufficient_explanations(model, img, 1, beam_width=10_000, max_size=4, max_roots=10_000, size_slack=None)
    assert {m for m, _ in res.mses} == truth and truth


# -- the graph: children and the floor ------------------------------------------------------------------
def test_children_and_floor_rule_with_known_probabilities():
    # cells A=0 (w 3), B=5 (w 1), C=10 (w 1), bias -3.5: the one MSE is {A, B, C}
    model = CellIndicators({0: 3.0, 5: 1.0, 10: 1.0}, bias=-3.5)
    g = sag(model, _cells_image([0, 5, 10]), 1, floor=0.4)
    full = _sigmoid(1.5)
    assert abs(g.full_probability - full) < 1e-6 and g.mses == ((0, 5, 10),)
    expect = {(0, 5, 10): 1.5, (0, 5): 0.5, (0, 10): 0.5, (5, 10): -1.5, (0,): -0.5, (5,): -2.5, (10,): -2.5}
    assert {n.regions for n in g.nodes} == set(expect)
    for n in g.nodes:
        assert abs(n.probability - _sigmoid(expect[n.regions])) < 1e-6
        assert n.is_root == (n.regions == (0, 5, 10))
    # {A,B} and {A,C} keep 76% of the full probability (> 40%): expanded; {B,C} keeps 22%: a leaf
    assert {(e.child, e.removed) for e in g.children((0, 5, 10))} == {((5, 10), 0), ((0, 10), 5), ((0, 5), 10)}
    assert {(e.child, e.removed) for e in g.children((0, 5))} == {((5,), 0), ((0,), 5)}
    assert g.children((5, 10)) == []
    assert g.children((0,)) == []  # one region: nothing left to remove
    assert [len(lvl) for lvl in g.levels()] == [1, 3, 3]
    # a higher floor stops at the root's children
    g2 = sag(model, _cells_image([0, 5, 10]), 1, floor=0.8)
    assert {n.regions for n in g2.nodes} == {(0, 5, 10), (0, 5), (0, 10), (5, 10)}


def test_children_cap_keeps_the_costliest_removals_and_node_budget():
    # four cue cells, the fourth worth twice: the one MSE is all four; dropping 15 costs the most
    model = CellIndicators({0: 1.0, 5: 1.0, 10: 1.0, 15: 2.0}, bias=-4.2)
    img = _cells_image([0, 5, 10, 15])
    g = sag(model, img, 1, max_children=2, floor=0.0)
    assert g.mses == ((0, 5, 10, 15),)
    assert [e.removed for e in g.children((0, 5, 10, 15))] == [15, 0]  # lowest probability first, ties by id
    assert all(len(g.children(n.regions)) <= 2 for n in g.nodes)
    full = sag(model, img, 1, max_children=None, floor=0.0, max_nodes=100)
    assert len(full.nodes) == 15  # every non-empty subset of the root
    small = sag(model, img, 1, max_children=None, floor=0.0, max_nodes=3)
    assert len(small.nodes) == 3 and all(e.child in {n.regions for n in small.nodes} for e in small.edges)


def test_diverse_mses_picks_the_largest_low_overlap_family():
    mses = [((1, 2), 0.9), ((2, 3), 0.95), ((4, 5), 0.8), ((1, 2, 3), 0.99), ((6,), 0.7)]
    assert diverse_mses(mses, max_overlap=0) == [(6,), (2, 3), (4, 5)]  # ties: the more probable
    assert diverse_mses(mses, max_overlap=1) == [(6,), (2, 3), (1, 2), (4, 5)]
    assert diverse_mses(mses, max_overlap=1, max_count=2) == [(6,), (2, 3)]
    assert diverse_mses([], 1) == []


# -- serialisation and figure ---------------------------------------------------------------------------
def test_json_round_trip():
    g = sag(CellIndicators({0: 3.0, 5: 1.0, 10: 1.0}, bias=-3.5), _cells_image([0, 5, 10]), 1)
    text = json.dumps(g.to_dict())
    back = SAG.from_dict(json.loads(text))
    assert back == g and back.to_dict() == g.to_dict()


def test_figure_draws_thumbnails():
    img = _cells_image([0, 5, 10])
    g = sag(CellIndicators({0: 3.0, 5: 1.0, 10: 1.0}, bias=-3.5), img, 1)
    fig = g.plot(image=img)
    rgb = to_rgb(fig)
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.std() > 10 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20
    assert len(fig.axes) == len(g.nodes)
    assert to_rgb(g.plot()).std() > 10  # without the image: the region masks


# -- no side effects ------------------------------------------------------------------------------------
def _model_state(model):
    return (
        [m.training for m in model.modules()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [p.requires_grad for p in model.parameters()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
        {k: v.clone() for k, v in model.state_dict().items()},
    )


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_no_side_effects(digits, mode):
    model = _trained(digits)
    model.train(mode == "train")
    model.head[0].eval()  # a mixed mode must survive
    x, y = digits[1].tensors
    F.cross_entropy(model(x[:16]), y[:16]).backward()
    next(model.parameters()).requires_grad_(False)
    before = _model_state(model)
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    g = sag(model, x[0], int(y[0]), grid_size=2)
    mse_stats(model, x[:3], y[:3], "grid", grid_size=2)
    after = _model_state(model)
    assert before[0] == after[0], "train/eval mode changed"
    for g0, g1 in zip(before[1], after[1]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1), ".grad changed"
    assert before[2] == after[2], "requires_grad changed"
    assert before[3] == after[3], "hooks left registered"
    assert all(torch.equal(before[4][k], after[4][k]) for k in before[4]), "state changed"
    assert torch.equal(rng[0], torch.get_rng_state()) and np.array_equal(rng[1], np.random.get_state()[1]) and rng[2] == random.getstate()
    assert g.full_probability > 0


# -- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image=torch.zeros(2, 1, 16, 16)), r"one \(C, H, W\)"),
        (dict(image=torch.zeros(16, 16)), r"one \(C, H, W\)"),
        (dict(fraction=0.0), r"sag.fraction must be a fraction in \(0, 1\]"),
        (dict(fraction=1.5), r"sag.fraction must be a fraction in \(0, 1\]"),
        (dict(regions=np.full((4, 4), -1)), "holds no region"),
        (dict(regions=np.zeros((0, 4), dtype=np.int64)), "holds no region"),
        (dict(regions=np.zeros((32, 32), dtype=np.int64)), "finer than the image"),
        (dict(regions=np.zeros((2, 4, 4), dtype=np.int64)), r"one \(h, w\) integer array"),
        (dict(regions=np.zeros((4, 4), dtype=bool)), "integer region ids"),
        (dict(regions="cells"), 'must be "grid"'),
        (dict(floor=-0.1), r"sag.floor must be a fraction in \[0, 1\]"),
        (dict(beam_width=0), "beam_width must be"),
        (dict(max_size=0), "max_size must be"),
        (dict(max_children=0), "max_children must be"),
        (dict(max_nodes=0), "max_nodes must be"),
        (dict(label=7), "label out of range"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(image=_cells_image([0]), label=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sag(TwoCue(), args.pop("image"), args.pop("label"), **args)


def test_bad_input_stats():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        mse_stats(TwoCue(), _cells_image([0]), [1])
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        mse_stats(TwoCue(), torch.stack([_cells_image([0])] * 2), [1])
    with pytest.raises(ValueError, match=r"\(N=2, h, w\)"):
        mse_stats(TwoCue(), torch.stack([_cells_image([0])] * 2), [1, 1], np.zeros((3, 4, 4), dtype=np.int64))
