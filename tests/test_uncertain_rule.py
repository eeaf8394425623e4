"""What "uncertain" means (the edge between two classes reverses, or their coefficient difference
flips sign) and when a coefficient counts (tau, bootstrap or standard-error intervals), on planted
cases whose answer is known; stored runs without the new options explain as 0.2 did."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lightning_i2x import ExplainOptions, I2XRun, ProbePassOptions, PrototypeOptions, Recorder, RunConfig, analysis, explain
from lightning_i2x.options import OptionsError
from lightning_i2x.record import open_run
from lightning_i2x.saliency import resolve_target_layer

from .conftest import TinyCNN
from .test_analysis import planted_trajectories

N = 400


def _explain(betas, **kw):
    p, y = planted_trajectories(betas)
    k, m = betas.shape[1:]
    return explain(p, y, np.arange(N) % m, np.ones((N, k), bool), tau=0.3, **kw)


def _one_class_oscillates(intervals=6):
    """Prototype 3 raises then lowers class 2, alone (every other coefficient is 0): +, -, +, -,
    +, + (its last sign change at interval 4)."""
    betas = np.zeros((intervals, 8, 10))
    for t, s in enumerate([1, -1, 1, -1, 1, 1][:intervals]):
        betas[t, 3, 2] = s
    return betas


def _edge_reverses():
    """Prototype 5 moves confidence 7 -> 2 at interval 0, 2 -> 7 at interval 2, 7 -> 2 at 4; no
    edge at intervals 1 and 3 (skipped) nor 5."""
    betas = np.zeros((6, 8, 10))
    for t, s in ((0, 1), (2, -1), (4, 1)):
        betas[t, 5, 2], betas[t, 5, 7] = 0.8 * s, -0.6 * s
    betas[5, 5, 2] = 0.8  # raises 2 alone: no edge
    return betas


def test_one_class_oscillating_is_uncertain_by_the_difference_rule_only():
    betas = _one_class_oscillates()
    diff = _explain(betas, uncertain_rule="difference")
    # the difference flips 4 times against every class: one oscillation reads as 9 confusions
    assert {u.classes for u in diff.uncertain} == {tuple(sorted((2, b))) for b in range(10) if b != 2}
    assert all(u.prototype == 3 and u.flips == 4 for u in diff.uncertain)
    edges = _explain(betas, uncertain_rule="edges")
    assert edges.uncertain == [] and edges.uncertain_pairs() == []
    assert edges.params["uncertain_rule"] == "edges" and diff.params["uncertain_rule"] == "difference"


def test_a_reversing_edge_is_uncertain_by_both_rules_with_its_reversal_count():
    betas = _edge_reverses()
    edges = _explain(betas, uncertain_rule="edges")
    assert [(u.prototype, u.classes, u.flips) for u in edges.uncertain] == [(5, (2, 7), 2)]
    diff = _explain(betas, uncertain_rule="difference")
    assert diff.uncertain[0][:3] == (5, (2, 7), 2)
    # ... and, by the difference, against every other class too (2's and 7's coefficients alone flip)
    assert len(diff.uncertain) == 1 + 2 * 8
    # ranked by reversals x the mean over the edge intervals of min(|beta_a|, |beta_b|) = 2 x 0.6
    assert edges.uncertain[0].score == pytest.approx(2 * 0.6, rel=0.02)
    reversals, magnitude, last = analysis.pair_reversals(edges.beta, edges.significant, 2, 7)
    assert (reversals[5], last[5]) == (2, 4) and magnitude[5] == pytest.approx(0.6, rel=0.02)
    assert reversals.sum() == 2  # nothing else
    md = edges.to_markdown()
    assert "| prototype | classes | reversals | score |" in md and "edge between the two classes reverses" in md
    assert json.loads(json.dumps(edges.to_dict()))["params"]["uncertain_rule"] == "edges"


def test_the_learning_order_reads_the_chosen_rule():
    betas = _one_class_oscillates()
    betas[:, 6, 4], betas[:, 6, 9] = 1.0, -1.0  # a stable edge 9 -> 4: separated from interval 0 on
    diff = {s.classes: s.interval for s in _explain(betas, uncertain_rule="difference").learning_order()}
    edges = {s.classes: s.interval for s in _explain(betas, uncertain_rule="edges").learning_order()}
    assert diff[(2, 7)] == 4  # the difference of 2 and 7 last flipped at interval 4
    assert edges[(2, 7)] is None  # no edge ever joined 2 and 7: never separated
    assert diff[(4, 9)] == edges[(4, 9)] == 0


def test_bad_option_values_name_the_option():
    with pytest.raises(ValueError, match=r"ExplainOptions.uncertain_rule must be one of \('edges', 'difference'\), got 'edge'"):
        ExplainOptions(uncertain_rule="edge")
    with pytest.raises(ValueError, match=r"ExplainOptions.significance must be one of \('tau', 'bootstrap', 'stderr'\), got 'sd'"):
        ExplainOptions(significance="sd")
    with pytest.raises(ValueError, match=r"ExplainOptions.significance_level must be a number in \(0, 1\), got 1.5"):
        ExplainOptions(significance_level=1.5)
    with pytest.raises(ValueError, match=r"ExplainOptions.bootstrap_samples must be an integer >= 2, got 1"):
        ExplainOptions(bootstrap_samples=1)
    with pytest.raises(ValueError, match=r"uncertain_rule must be one of \('edges', 'difference'\), got 'x'"):
        _explain(np.zeros((2, 3, 2)), uncertain_rule="x")


# -- significance -------------------------------------------------------------------------------
def _few_large_many_small(seed=0):
    """Prototype 0 moves only 4 samples, by +6, +6, -2, -2 (a large ridge coefficient, 8/5, that
    rests on two samples); prototype 1 moves all the others by 0.1 x its change, plus noise of sd 0.3
    (a small coefficient, standard error about 0.3 / sqrt(N))."""
    rng = np.random.default_rng(seed)
    n = 600
    dp = np.zeros((n, 2))
    dy = np.zeros((n, 1))
    dp[:4, 0] = 1.0
    dy[:4, 0] = [6.0, 6.0, -2.0, -2.0]
    dp[4:, 1] = rng.normal(size=n - 4)
    dy[4:, 0] = 0.1 * dp[4:, 1] + 0.3 * rng.normal(size=n - 4)
    return dp, dy


def test_bootstrap_and_stderr_judge_support_not_size():
    dp, dy = _few_large_many_small()
    beta = analysis.ridge(dp, dy, 1.0)
    assert beta[0, 0] > 1.0 > 0.2 > beta[1, 0] > 0.05  # tau (one sd of the two) keeps the large one only
    tau = analysis.interval_thresholds(beta[None], "auto")
    np.testing.assert_array_equal(analysis.coefficient_signs(beta[None], tau)[0, :, 0], [1, 0])
    # the truth: a resample draws no +6 sample with probability about e^-2 = 0.135 > 0.025 (then
    # the coefficient is <= 0), so the 95 % interval of prototype 0 holds 0; prototype 1's
    # coefficient is 0.1 +- 1.96 x 0.012, which excludes 0
    for method in ("bootstrap", "stderr"):
        lo, hi = analysis.ridge_intervals(dp, dy, 1.0, method, level=0.05, samples=400, seed=0)
        np.testing.assert_array_equal(analysis.interval_signs(lo, hi)[:, 0], [0, 1], err_msg=method)
        assert lo[1, 0] > 0.05 and hi[1, 0] < 0.15, method


def test_the_vectorised_bootstrap_is_the_loop_of_refits():
    rng = np.random.default_rng(1)
    dp, dy = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    counts = analysis.bootstrap_counts(30, 50, seed=7)
    assert counts.shape == (50, 30) and (counts.sum(axis=1) == 30).all()
    np.testing.assert_array_equal(counts, analysis.bootstrap_counts(30, 50, seed=7))  # seeded
    for lam in (1.0, 0.0):
        betas = np.stack([analysis.ridge(dp[np.repeat(np.arange(30), c)], dy[np.repeat(np.arange(30), c)], lam) for c in counts])
        lo, hi = analysis.ridge_intervals(dp, dy, lam, "bootstrap", level=0.1, samples=50, seed=7)
        np.testing.assert_allclose(lo, np.quantile(betas, 0.05, axis=0), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(hi, np.quantile(betas, 0.95, axis=0), rtol=1e-8, atol=1e-10)


def test_the_stderr_is_the_sandwich_of_the_ridge():
    rng = np.random.default_rng(2)
    dp, dy = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    lo, hi = analysis.ridge_intervals(dp, dy, 2.0, "stderr", level=0.05)
    x, y = dp - dp.mean(0), dy - dy.mean(0)
    a = np.linalg.inv(x.T @ x + 2.0 * np.eye(3))
    beta = a @ x.T @ y
    e = y - x @ beta
    for q in range(2):
        cov = a @ sum(e[i, q] ** 2 * np.outer(x[i], x[i]) for i in range(40)) @ a
        np.testing.assert_allclose((hi[:, q] - lo[:, q]) / 2, 1.959963984540054 * np.sqrt(np.diag(cov)), rtol=1e-9)
        np.testing.assert_allclose((hi[:, q] + lo[:, q]) / 2, beta[:, q], rtol=1e-9, atol=1e-12)


def test_explain_with_interval_significance_keeps_the_planted_edge():
    betas = _edge_reverses()
    p, y = planted_trajectories(betas)
    y = y + 0.05 * np.random.default_rng(3).normal(size=y.shape)  # a little noise, so intervals have width
    for significance in ("bootstrap", "stderr"):
        for rule in ("edges", "difference"):
            expl = explain(p, y, np.arange(N) % 10, np.ones((N, 8), bool), uncertain_rule=rule, significance=significance,
                           bootstrap_samples=50)
            found = [(u.prototype, u.classes, u.flips) for u in expl.uncertain]
            assert found[0] == (5, (2, 7), 2) and (rule == "difference" or found == [(5, (2, 7), 2)]), (rule, significance, found)
            assert expl.params["significance"] == significance and expl.params["significance_level"] == 0.05
            assert expl.significant.shape == expl.beta.shape
            assert (0, 7, 2, [5]) in expl.edges(2) and (2, 2, 7, [5]) in expl.edges(7)
            if significance == "bootstrap":
                assert expl.params["bootstrap_samples"] == 50
            else:
                assert "bootstrap_samples" not in expl.params


# -- stored runs ---------------------------------------------------------------------------------
def test_a_stored_config_without_the_new_fields_reads_as_0_2():
    new = ExplainOptions()
    assert (new.uncertain_rule, new.significance) == ("edges", "stderr")  # new runs
    config = RunConfig("features", "gradcam", 1, ProbePassOptions(), PrototypeOptions(), ExplainOptions(min_flips=3)).to_dict()
    for name in ExplainOptions.LEGACY:
        del config["explain"][name]
    old = RunConfig.from_dict(config, strict=True).explain
    assert old == ExplainOptions(min_flips=3, uncertain_rule="difference", significance="tau")
    assert RunConfig.from_version_1({"target_layer": "features", "explain_kwargs": {"min_flips": 1}}).explain.uncertain_rule == "difference"
    del config["explain"]["tau"]  # every field of 0.2 must still be there
    with pytest.raises(OptionsError, match=r"ExplainOptions is missing \['tau'\]"):
        RunConfig.from_dict(config, strict=True)


def test_a_0_2_run_loads_and_explains_with_the_difference_rule(tmp_path, digits):
    torch.manual_seed(0)
    model = TinyCNN()
    images, labels = digits[1].tensors
    layer = resolve_target_layer(model, "features", images[:2], forward_fn=lambda m, x: m(x))
    run = open_run(tmp_path / "run", images, labels, [str(c) for c in range(10)], layer, num_prototypes=5,
                   config=RunConfig("features", "gradcam", 1, ProbePassOptions(), PrototypeOptions(), ExplainOptions(min_flips=1)))
    recorder = Recorder(5)
    from lightning_i2x import probe_pass

    for step in range(4):
        with torch.no_grad():
            for prm in model.parameters():
                prm.add_(0.05 * torch.randn_like(prm))
        recorder.record(run, probe_pass(model, layer.module, images, labels), epoch=step, global_step=step)
    manifest = json.loads((run.path / "manifest.json").read_text())
    for name in ExplainOptions.LEGACY:  # as 0.2 wrote it
        del manifest["config"]["explain"][name]
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    old = I2XRun.load(run.path)
    assert old.config.explain.uncertain_rule == "difference" and old.config.explain.significance == "tau"
    expl = old.explain()
    assert expl.params["uncertain_rule"] == "difference" and expl.params["significance"] == "tau"
    legacy = old.explain(ExplainOptions(min_flips=1, uncertain_rule="difference", significance="tau"))
    assert expl.to_dict() == legacy.to_dict()
    assert old.explain(uncertain_rule="edges").params["uncertain_rule"] == "edges"
