"""X-features (XNN's SRAE) on planted truth: sources recovered, the pull-away term decorrelates,
the log reconstruction loss lets unpredictable dimensions go; the losses against brute force;
bad inputs raise clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from lightning_i2x.xfeatures import (
    SRAEOptions,
    XFeatureExplainer,
    bic_score,
    fit_srae,
    log_reconstruction_loss,
    pull_away_loss,
    train_srae,
)

from .conftest import global_rng_untouched

FAST = SRAEOptions(pretrain_epochs=2, epochs=20, lr_step=15)
SHORT = dict(pretrain_epochs=1, epochs=12, lr_step=10)  # the two comparisons: fewer epochs on fewer samples


def planted(n: int = 1000, k: int = 3, noise: int = 3, d: int = 20, active: float = 0.3, seed: int = 0):
    """x = M [s_1..s_k, noise] with sparse non-negative sources s, a random non-negative M and
    small noise factors; y = sum_k w_k s_k."""
    rng = np.random.default_rng(seed)
    s = rng.exponential(1.0, (n, k)) * (rng.random((n, k)) < active)
    factors = np.concatenate([s, 0.1 * rng.standard_normal((n, noise))], axis=1)
    mixing = rng.random((d, k + noise))
    x = factors @ mixing.T
    w = np.array([1.0, 2.0, 1.5])[:k]
    return x, s @ w, s


def _abs_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(0)) / (a.std(0) + 1e-12)
    b = (b - b.mean(0)) / (b.std(0) + 1e-12)
    return np.abs(a.T @ b) / len(a)


def _mean_offdiag(c: np.ndarray) -> float:
    corr = _abs_corr(c, c)
    return float(corr[~np.eye(len(corr), dtype=bool)].mean())


def test_pull_away_and_log_reconstruction_losses_match_brute_force():
    rng = np.random.default_rng(1)
    c = torch.as_tensor(rng.random((7, 3)))
    cos = [[float(c[:, i] @ c[:, j] / (c[:, i].norm() * c[:, j].norm())) for j in range(3)] for i in range(3)]
    expected = np.mean([cos[i][j] ** 2 for i in range(3) for j in range(3) if i != j])
    assert float(pull_away_loss(c)) == pytest.approx(expected, rel=1e-6)
    assert float(pull_away_loss(c[:, :1])) == 0.0
    x, r = torch.as_tensor(rng.random((5, 4))), torch.as_tensor(rng.random((5, 4)))
    per_dim = ((r - x) ** 2).mean(0)
    assert float(log_reconstruction_loss(r, x, q=100)) == pytest.approx(float(torch.log(1 + 100 * per_dim).mean()))
    assert bic_score(0.5, 1.0, 100, 2) < bic_score(0.5, 1.0, 100, 3)  # the same fit with one x-feature more scores worse


PLANTED_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def planted_fits():
    """Per seed of the planted case: (held-out R^2, matched source correlations sorted ascending),
    n_x = 3, the test's schedule; one thread (tiny tensors)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for seed in PLANTED_SEEDS:
            x, y, s = planted(seed=seed)
            with global_rng_untouched():
                fitted = fit_srae(x, y, n_x=3, options=FAST)
            c = fitted.contributions(x)
            np.testing.assert_allclose(c.sum(axis=1) + fitted.bias, fitted.predict(x))
            corr = _abs_corr(c, s)
            rows, cols = linear_sum_assignment(-corr)
            assert sorted(cols.tolist()) == [0, 1, 2]
            out[seed] = (fitted.r2, np.sort(corr[rows, cols]), corr)
    finally:
        torch.set_num_threads(threads)
    return out


def test_planted_sources_reached_so_far(planted_fits):
    """What holds on both seeds (docs/xfeatures.md): R^2 0.979 / 0.988, matched pairs
    (0.65, 0.73, 0.96) / (0.35, 0.69, 0.75). Asserted so that a regression fails; the issue's
    goals are the strict xfail below."""
    for seed, (r2, matched, corr) in planted_fits.items():
        assert r2 > 0.97, (seed, r2)
        assert matched[-1] > 0.7 and matched.mean() > 0.55, (seed, corr.round(2))


@pytest.mark.xfail(strict=True, reason="open gap (docs/xfeatures.md): one or two sources end up mixed, R^2 0.98 against 0.99")
def test_planted_sources_are_recovered_with_faithful_score(planted_fits):
    """The issue's goals on every seed: held-out R^2 > 0.99 and each matched source above 0.9."""
    for seed, (r2, matched, corr) in planted_fits.items():
        assert r2 > 0.99, (seed, r2)
        assert matched[0] > 0.9, (seed, corr.round(2))


def test_n_x_search_fits_every_candidate_and_keeps_the_lowest_score(one_torch_thread):
    """Three planted sources: n_x = 2 scores worse than 1 here (-379 against -383), so stopping
    at the first rise kept a single x-feature; the full search keeps the lowest score, 4 (-824; 3:
    -491), and never fewer x-features than sources."""
    x, y, _ = planted(seed=0)
    fitted = fit_srae(x, y, max_n_x=4, options=SRAEOptions(**SHORT))
    scores = fitted.validation_scores
    assert sorted(scores) == [1, 2, 3, 4]
    assert fitted.n_x == min(scores, key=scores.get) and fitted.n_x >= 3, scores
    assert fitted.r2 > 0.95


def test_pull_away_lowers_the_correlation_of_contributions(one_torch_thread):
    """The issue's check: the pull-away term lowers the mean absolute correlation between
    contributions, against alpha_pt = 0, on two training seeds. At weight 50: at the paper's 0.5 the
    term is drowned by alpha_rec x L_rec and has no measurable effect (0.466 / 0.390 against 0.419 /
    0.393 without it; docs/xfeatures.md)."""
    x, y, _ = planted(n=600, seed=2)
    xs = (x - x.mean(0)) / x.std(0)
    ys = (y - y.mean()) / y.std()
    for seed in (0, 1):
        corr, pull = {}, {}
        for alpha in (0.0, 50.0):
            model = train_srae(xs, ys, 3, SRAEOptions(**SHORT, alpha_pt=alpha, seed=seed))
            with torch.no_grad():
                c = model.contributions(model.encode(torch.as_tensor(xs, dtype=torch.float32)))
            corr[alpha], pull[alpha] = _mean_offdiag(c.numpy()), float(pull_away_loss(c))
        assert corr[50.0] < corr[0.0] - 0.05, (seed, corr)  # measured: 0.334 vs 0.419, 0.245 vs 0.393
        assert pull[50.0] < 0.5 * pull[0.0], (seed, pull)  # the term's own value: 0.040 vs 0.129, 0.037 vs 0.128


def test_log_reconstruction_lets_noise_dimensions_go(one_torch_thread):
    """30 % of the input dimensions replaced by noise nothing predicts: the log loss reconstructs
    the clean ones better than plain MSE, which spends the bottleneck on the noise."""
    rng = np.random.default_rng(3)
    x, y, _ = planted(n=600, d=20, seed=3)
    noisy = rng.choice(20, size=6, replace=False)
    x[:, noisy] = rng.standard_normal((len(x), 6)) * x.std(0)[noisy] * 3
    xs = (x - x.mean(0)) / x.std(0)
    ys = (y - y.mean()) / y.std()
    clean = np.setdiff1d(np.arange(20), noisy)
    err = {}
    for rec in ("log", "mse"):
        model = train_srae(xs, ys, 3, SRAEOptions(**SHORT, reconstruction=rec))
        with torch.no_grad():
            recon = model(torch.as_tensor(xs, dtype=torch.float32))[1].numpy()
        err[rec] = float(((recon - xs)[:, clean] ** 2).mean())
    assert err["log"] < err["mse"], err


class _Flat(nn.Module):
    """A model whose only candidate layers output flat vectors."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_bad_inputs_raise_clear_errors():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    images = torch.randn(20, 1, 4, 4)
    with pytest.raises(ValueError, match="n_x must be an integer >= 1"):
        XFeatureExplainer([0], n_x=0)
    with pytest.raises(ValueError, match="must be a non-empty list"):
        XFeatureExplainer([])
    with pytest.raises(ValueError, match=r"classes \[5\] are not classes of the model, which scores 3 classes"):
        XFeatureExplainer([0, 5], n_x=1).fit(cnn, images)
    with pytest.raises(ValueError, match="not a feature map"):
        XFeatureExplainer([0], n_x=1).fit(_Flat(), images, target_layer="body.2")
    with pytest.raises(ValueError, match="SRAEOptions.dropout must be a probability"):
        SRAEOptions(dropout=1.0)
    with pytest.raises(ValueError, match="constant"):
        fit_srae(np.random.default_rng(0).random((20, 3)), np.ones(20), n_x=1)
