"""The I2X analysis against ground truth planted in synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_i2x import analysis, explain


def _brute_intensity(cams, assign, k):
    n, length = assign.shape
    out = np.full((n, k), np.nan)
    for i in range(n):
        for kk in range(k):
            sel = [cams[i, j] for j in range(length) if assign[i, j] == kk]
            if sel:
                out[i, kk] = np.mean(sel)
    return out


def test_intensity_equals_brute_force():
    rng = np.random.default_rng(0)
    cams = rng.random((3, 20, 12))
    assign = rng.integers(0, 5, (20, 12))
    got = analysis.prototype_intensity(cams, assign, 6)  # prototype 5 is absent everywhere
    assert got.shape == (3, 20, 6)
    for t in range(3):
        np.testing.assert_allclose(got[t], _brute_intensity(cams[t], assign, 6), equal_nan=True)
    assert np.isnan(got[:, :, 5]).all()


def test_ridge_recovers_planted_beta():
    rng = np.random.default_rng(1)
    beta = rng.normal(size=(6, 4))
    dp = rng.normal(size=(2000, 6))
    dy = dp @ beta + 0.01 * rng.normal(size=(2000, 4)) + np.array([5.0, -3.0, 0.0, 1.0])  # offsets: centring removes them
    np.testing.assert_allclose(analysis.ridge(dp, dy, lam=1.0), beta, atol=0.01)
    # the closed form is the ridge solution: compare with the augmented least-squares system
    x, y = dp - dp.mean(0), dy - dy.mean(0)
    aug = np.linalg.lstsq(np.vstack([x, np.sqrt(3.0) * np.eye(6)]), np.vstack([y, np.zeros((6, 4))]), rcond=None)[0]
    np.testing.assert_allclose(analysis.ridge(dp, dy, lam=3.0), aug, atol=1e-10)


def planted_trajectories(betas, n=400, seed=0):
    """Intensities and confidences whose interval changes follow dY[t] = dP[t] @ betas[t] exactly."""
    rng = np.random.default_rng(seed)
    t1, k, m = betas.shape
    p = np.zeros((t1 + 1, n, k))
    y = np.zeros((t1 + 1, n, m))
    p[0] = rng.random((n, k))
    for t in range(t1):
        dp = rng.normal(size=(n, k))
        p[t + 1] = p[t] + dp
        y[t + 1] = y[t] + dp @ betas[t]
    return p, y


def _planted_flip_betas(k=8, m=10, intervals=5, seed=0):
    rng = np.random.default_rng(seed)
    betas = 0.02 * rng.normal(size=(intervals, k, m))
    for t in range(intervals):
        s = 1.0 if t % 2 == 0 else -1.0  # prototype 3 alternates between classes 2 and 7
        betas[t, 3, 2], betas[t, 3, 7] = s, -s
    return betas


def test_explain_recovers_beta_and_finds_planted_uncertain_prototype():
    betas = _planted_flip_betas()
    p, y = planted_trajectories(betas)
    labels = np.arange(400) % 10
    expl = explain(p, y, labels, np.ones((400, 8), bool))
    assert expl.beta.shape == (5, 8, 10)
    np.testing.assert_allclose(expl.beta, betas, atol=0.01)
    top = expl.uncertain[0]
    assert (top.prototype, top.classes, top.flips) == (3, (2, 7), 4)
    assert all(u.prototype == 3 for u in expl.uncertain)  # nothing else flips
    assert expl.uncertain_pairs()[0] == (2, 7)
    json.dumps(expl.to_dict())


def test_min_flips_and_absolute_tau():
    betas = _planted_flip_betas(intervals=2)  # one flip only
    p, y = planted_trajectories(betas)
    labels = np.arange(400) % 10
    assert explain(p, y, labels, np.ones((400, 8), bool)).uncertain == []
    one = explain(p, y, labels, np.ones((400, 8), bool), min_flips=1)
    assert one.uncertain[0][:3] == (3, (2, 7), 1)
    assert explain(p, y, labels, np.ones((400, 8), bool), min_flips=1, tau=5.0).uncertain == []  # above every |beta|


def test_edges_name_the_planted_transfer():
    rng = np.random.default_rng(3)
    betas = 0.01 * rng.normal(size=(3, 5, 4))
    betas[1, 2, 0], betas[1, 2, 3] = 0.8, -0.8  # interval 1: prototype 2 moves confidence from class 3 to class 0
    p, y = planted_trajectories(betas, seed=3)
    expl = explain(p, y, np.arange(400) % 4, np.ones((400, 5), bool), class_names=["a", "b", "c", "d"])
    assert expl.edges("a") == [(1, 3, 0, [2])]
    assert (1, 0, 3, [2]) not in expl.edges(3)
    assert expl.edges("b") == []


def test_learning_order_follows_the_last_flip():
    k, m, intervals = 4, 3, 5
    betas = np.zeros((intervals, k, m))
    signs_01 = [1, -1, 1, 1, 1]  # pair (0, 1): last flip at interval 2, then stable
    signs_02 = [1, 1, 1, 1, 1]  # pair (0, 2) through prototype 1: never flips
    for t in range(intervals):
        betas[t, 0, 1] = -2 * signs_01[t]  # separates 0 from 1 (and 2 from 1), not 0 from 2
        betas[t, 1, 0], betas[t, 1, 2] = signs_02[t], -signs_02[t]
    p, y = planted_trajectories(betas, seed=4)
    expl = explain(p, y, np.arange(400) % 3, np.ones((400, k), bool), tau=0.3)
    order = {s.classes: s.interval for s in expl.learning_order()}
    assert order[(0, 2)] == 0
    assert order[(0, 1)] == order[(1, 2)] == 2
    assert [st.classes for st in expl.learning_order()] == [(0, 2), (0, 1), (1, 2)]


def test_shared_and_specialised_prototypes():
    n, k = 300, 6
    labels = np.arange(n) % 3
    presence = np.zeros((n, k), bool)
    presence[labels == 1, 4] = True  # shared by every class-1 sample
    cls1 = np.flatnonzero(labels == 1)
    presence[cls1[:40], 2] = True  # 40 % of class 1: not shared
    presence[labels == 0, 1] = np.arange((labels == 0).sum()) % 2 == 0  # 50 % of class 0
    # two groups of class-1 samples learn differently; prototype 2 sits in the first
    p = np.zeros((3, n, k))
    y = np.zeros((3, n, 3))
    rng = np.random.default_rng(5)
    y[1] = 0.01 * rng.normal(size=(n, 3))
    y[1, cls1[:40]] += [0.0, 0.5, -0.5]
    y[1, cls1[40:]] += [-0.5, 0.5, 0.0]
    y[2] = y[1]
    expl = explain(p, y, labels, presence)
    assert expl.shared_prototypes(1) == [4]
    assert 2 in expl.specialised_prototypes(1)
    assert 4 not in expl.specialised_prototypes(1)
    assert expl.shared_prototypes(0) == []


def test_salient_presence_uses_threshold_on_normalised_map():
    cam = np.array([[0.0, 0.2, 1.0, 0.6], [5.0, 5.0, 5.0, 5.0]])
    assign = np.array([[0, 1, 2, 3], [0, 0, 1, 1]])
    got = analysis.salient_presence(cam, assign, 4)
    assert got.tolist() == [[False, False, True, True], [False, False, False, False]]


def test_learning_groups_find_planted_groups():
    rng = np.random.default_rng(6)
    dy = np.vstack([rng.normal([0.5, -0.5], 0.01, (50, 2)), rng.normal([-0.5, 0.5], 0.01, (50, 2))])
    labels = analysis.learning_groups(dy)
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[50] and labels[0] >= 0


def test_explain_rejects_bad_parameters():
    p, y = np.zeros((2, 5, 3)), np.zeros((2, 5, 2))
    with pytest.raises(ValueError, match="shapes disagree"):
        explain(p, y, np.zeros(4), np.ones((5, 3), bool))
    with pytest.raises(ValueError, match="lambda"):
        explain(p, y, np.zeros(5), np.ones((5, 3), bool), ridge_lambda=-1)
    with pytest.raises(ValueError, match="tau"):
        explain(p, y, np.zeros(5), np.ones((5, 3), bool), tau="big")


def test_learning_groups_subsample_recovers_planted_groups_and_labels_every_sample():
    """Above max_cluster_samples, the clustered subset's groups reach every sample by nearest
    neighbour: three planted groups of 2000 come back whole, and the run is deterministic."""
    rng = np.random.default_rng(3)
    centres = np.array([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 0.6]])
    dy = np.vstack([rng.normal(c, 0.02, (2000, 3)) for c in centres])
    truth = np.repeat(np.arange(3), 2000)
    labels = analysis.learning_groups(dy, max_cluster_samples=500)
    for g in range(3):
        assert len(set(labels[truth == g])) == 1 and labels[truth == g][0] >= 0
    assert len(set(labels)) == 3
    assert np.array_equal(labels, analysis.learning_groups(dy, max_cluster_samples=500))


def test_learning_groups_subsample_keeps_nan_rows_noise_and_matches_full_below_the_cap():
    rng = np.random.default_rng(4)
    dy = np.vstack([rng.normal([0.5, -0.5], 0.01, (60, 2)), rng.normal([-0.5, 0.5], 0.01, (60, 2))])
    assert np.array_equal(analysis.learning_groups(dy, max_cluster_samples=120), analysis.learning_groups(dy, max_cluster_samples=None))
    dy[[0, 70]] = np.nan
    labels = analysis.learning_groups(dy, max_cluster_samples=50)
    assert labels[0] == -1 and labels[70] == -1
    assert len(set(labels[1:60])) == 1 and len(set(labels[71:])) == 1 and labels[1] != labels[71]
    with pytest.raises(ValueError, match="max_cluster_samples"):
        analysis.learning_groups(dy, max_cluster_samples=1)


def test_explain_rejects_groups_of_the_wrong_shape():
    p, y = np.zeros((3, 5, 2)), np.zeros((3, 5, 2))
    with pytest.raises(ValueError, match=r"groups must be \(2, 5\)"):
        explain(p, y, np.zeros(5), np.ones((5, 2), bool), groups=np.zeros((1, 10), np.int64))
