"""Shortcut repair without human masks: no silent no-op (nothing trained, and said why), the
paired interval of every claimed gain, the suspects' latent subspace, RR-ClArC (``mode="latent"``)
and P-ClArC (``project_out``)."""

from __future__ import annotations

import copy
import shutil

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from lightning_i2x import FinetuneOptions, I2XCallback, I2XRun, PerturbationFinetuner
from lightning_i2x.finetune import (
    FinetuneResult,
    PairTarget,
    PrototypeTarget,
    Selection,
    latent_penalty,
    mcnemar_p,
    paired_gain,
    project_out,
    suspect_basis,
)
from lightning_i2x.measures import RelianceMeasure

from .conftest import TinyCNN, trainer_kwargs
from .test_shortcut_finetune import EXPLAIN, _model, corner_prototypes
from .test_shortcut_finetune import decoy_run as decoy_run  # noqa: F401  (the module-scoped fixture)


def _same_weights(model, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# -- uncertainty of the claimed gains -----------------------------------------------------------------
def planted_predictions(n: int, gained: int, lost: int, seed: int = 0):
    """Labels and two prediction vectors on the same n images: ``gained`` images wrong -> right,
    ``lost`` right -> wrong, the rest alike (80 % right)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    before, after = y.copy(), y.copy()
    order = rng.permutation(n)
    g, lo, wrong = order[:gained], order[gained:gained + lost], order[gained + lost:gained + lost + n // 5]
    before[g] = (y[g] + 1) % 10
    after[lo] = (y[lo] + 1) % 10
    before[wrong] = after[wrong] = (y[wrong] + 3) % 10
    return y, before, after


def test_a_small_gain_that_flips_both_ways_is_within_noise():
    y, before, after = planted_predictions(250, gained=10, lost=5)
    g = paired_gain(y, before, after, seed=0)
    assert (g.gained, g.lost, g.n) == (10, 5, 250)
    assert g.gain == pytest.approx(5 / 250)  # the "+2.00 points" of a digits run
    assert g.low < 0 < g.high and g.within_noise
    assert g.p_value == pytest.approx(mcnemar_p(10, 5)) and g.p_value > 0.05
    assert "within noise" in g.describe() and "+2.00 points" in g.describe()
    assert paired_gain(y, before, after, seed=0) == g  # seeded
    # no discordant image: an interval of width 0 at 0, within noise
    assert paired_gain(y, before, before).within_noise


def test_a_large_consistent_gain_is_not_noise():
    y, before, after = planted_predictions(250, gained=30, lost=0)
    g = paired_gain(y, before, after, seed=1)
    assert g.low > 0 and not g.within_noise and g.p_value < 1e-6
    assert "beyond noise" in g.describe()


def test_mcnemar_is_the_exact_binomial():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_p(10, 5) == pytest.approx(2 * sum(__import__("math").comb(15, i) for i in range(6)) / 2**15)
    with pytest.raises(ValueError, match="one length"):
        paired_gain(np.zeros(3), np.zeros(3), np.zeros(2))


def test_result_says_within_noise_and_stores_the_intervals():
    from lightning_i2x.finetune._result import gain_intervals

    y, control, after = planted_predictions(250, gained=10, lost=5)
    before = control.copy()
    cm = np.zeros((10, 10), int)
    gains = gain_intervals(y, before, after, control, seed=0)
    result = FinetuneResult(targets=[PairTarget((2, 7), (1,))], class_names=[str(c) for c in range(10)], mode="mask",
                            schedule=("curated",), num_val_samples=250, accuracy_before=float((before == y).mean()),
                            accuracy_after=float((after == y).mean()), control_accuracy_after=float((control == y).mean()),
                            confusions_before={(2, 7): (0, 0)}, confusions_after={(2, 7): (0, 0)},
                            confusion_matrix_before=cm, confusion_matrix_after=cm, gains=gains)
    md = result.to_markdown()
    assert "targeting adds +2.00 points" in md and "within noise" in md
    assert result.gain_is_noise("targeting") is True and result.gain_is_noise("nothing") is None
    d = result.to_dict()["gain_intervals"]
    assert set(d) == {"accuracy", "targeting", "control"}
    assert d["targeting"]["low"] < 0 < d["targeting"]["high"] and d["targeting"]["within_noise"] is True
    assert d["targeting"]["level"] == 0.95 and d["targeting"]["gained"] == 10
    # a large gain is reported without the caveat
    y, control, after = planted_predictions(250, gained=40, lost=0)
    result.gains = gain_intervals(y, control, after, control)
    assert "beyond noise" in result.to_markdown() and "within noise" not in result.to_markdown()


# -- no silent no-op -----------------------------------------------------------------------------------
def _no_suspect_copy(decoy_run, path):
    shutil.copytree(decoy_run.run.path, path)
    run = I2XRun.load(path)
    arrays, _ = run.attachment("reliance")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    arrays["reliance"] = np.zeros_like(arrays["reliance"])
    run.save_attachment("reliance", arrays=arrays)
    run = I2XRun.load(path)
    assert run.suspects() == []
    return run


def test_no_suspect_trains_nothing_and_says_why(decoy_run, tmp_path):
    run = _no_suspect_copy(decoy_run, tmp_path / "run")
    model = _model(decoy_run.state)
    ft = PerturbationFinetuner(run, FinetuneOptions(prototypes="suspects", mode="latent", out_dir=tmp_path / "ft"), progress=False)
    with pytest.warns(RuntimeWarning, match="no shortcut suspect.*nothing was fine-tuned"):
        result = ft.fit(model, DataLoader(decoy_run.data[0], batch_size=64), DataLoader(decoy_run.data[1], batch_size=100))
    assert result.skipped and _same_weights(model, decoy_run.state)
    md = result.to_markdown()
    assert "nothing was trained (the weights are unchanged)" in md and "no shortcut suspect" in md
    assert result.to_dict()["trained"] is False and not (tmp_path / "ft").exists()


def test_pairs_that_flag_no_training_sample_train_nothing(decoy_run, tmp_path):
    model = _model(decoy_run.state)
    ds = decoy_run.data[0]
    n = len(ds)
    target = PairTarget((0, 1), (0,))
    empty = Selection(targets=[target], indices=np.arange(n), labels=ds.tensors[1].numpy(), flags=np.zeros((1, n), bool),
                      regions=np.zeros((n, 4, 4), bool))
    ft = PerturbationFinetuner(decoy_run.run.path, FinetuneOptions(pairs=[(0, 1)], mode="mask", out_dir=tmp_path / "ft"), progress=False)
    with pytest.warns(RuntimeWarning, match="flag no training sample of the pairs d0 <-> d1.*nothing was fine-tuned"):
        result = ft.fit(model, DataLoader(ds, batch_size=64), DataLoader(decoy_run.data[1], batch_size=100), selection=empty)
    assert result.skipped and _same_weights(model, decoy_run.state)
    assert "nothing was trained" in result.to_markdown() and "flag no training sample" in result.to_markdown()
    # prototypes flagged nowhere: the same, named
    empty_p = Selection(targets=[PrototypeTarget((3,))], indices=np.arange(n), labels=empty.labels, flags=np.zeros((1, n), bool),
                        regions=empty.regions)
    ft = PerturbationFinetuner(decoy_run.run.path, FinetuneOptions(prototypes=[3], mode="penalise", mask_region="all"), progress=False)
    with pytest.warns(RuntimeWarning, match=r"holds the targeted prototypes \(P-3\) anywhere"):
        assert ft.fit(model, DataLoader(ds, batch_size=64), DataLoader(decoy_run.data[1], batch_size=100), selection=empty_p).skipped
    assert _same_weights(model, decoy_run.state)


class ZeroReliance(RelianceMeasure):
    """The reliance measure, then every reliance set to 0: a run with no suspect, for sure."""

    def __call__(self, model, run, evidence=None, explanation=None, *, forward_fn=None) -> None:
        super().__call__(model, run, evidence, explanation, forward_fn=forward_fn)
        arrays, _ = run.attachment("reliance")
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        arrays["reliance"] = np.zeros_like(arrays["reliance"])
        run.save_attachment("reliance", arrays=arrays)


def test_auto_finetune_summary_says_nothing_was_trained(tmp_path, digits):
    pl.seed_everything(0, verbose=False)
    cb = I2XCallback(digits[1], num_prototypes=8, explain=EXPLAIN, views=False, measures=[ZeroReliance(n_random=1)],
                     auto_finetune=True, finetune=FinetuneOptions(prototypes="suspects", mode="mask", control=True))
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[cb]))
    model = TinyCNN(lr=0.05)
    trainer.fit(model, DataLoader(digits[0], batch_size=64, shuffle=True), DataLoader(digits[1], batch_size=100))
    state = copy.deepcopy(model.state_dict())
    result = cb.finetune_result
    assert result is not None and result.skipped and "no shortcut suspect" in result.skipped_reason
    assert _same_weights(model, state)
    acc = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("i2x/finetune/summary/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "nothing was trained" in text and "no shortcut suspect" in text


# -- the latent subspace ----------------------------------------------------------------------------------
def test_suspect_basis_spans_the_planted_directions():
    rng = np.random.default_rng(0)
    d = 8
    rest = rng.normal(size=(400, d)) * 0.1
    e = np.eye(d)
    shades = np.repeat(np.linspace(-1, 1, 10), 6)[:, None]  # a swatch in ten shades: a mean offset and a spread
    swatch = 3.0 * e[0] + shades * 2.0 * e[1] + rng.normal(size=(60, d)) * 0.05
    feats = np.concatenate([rest, swatch])
    assign = np.r_[np.full(400, 5), np.full(60, 2)]
    b = suspect_basis(feats, assign, [2], directions=3)
    v = b.basis.astype(np.float64)
    np.testing.assert_allclose(v.T @ v, np.eye(b.rank), atol=1e-5)
    assert b.rank == 2 and b.directions == {2: 2} and b.locations == {2: 60}
    # the basis spans e0 and e1: their projections keep all their length
    for k in (0, 1):
        assert np.linalg.norm(v.T @ e[k]) == pytest.approx(1.0, abs=1e-3)
    assert abs(v[:, 0] @ e[0]) > 0.7  # the first direction is about the centroid minus the rest's mean
    np.testing.assert_allclose(b.reference, rest.mean(0), atol=1e-6)
    # directions=1: the mean difference only; no location of the prototype: rank 0
    assert suspect_basis(feats, assign, [2], directions=1).rank == 1
    assert suspect_basis(feats, assign, [7]).rank == 0


class Planted(nn.Module):
    """logits = W flatten(features(x)), features a 1x1 identity convolution: the logits move along
    the direction ``v`` of the feature space at every location."""

    def __init__(self, v: torch.Tensor):
        super().__init__()
        d = v.numel()
        self.features = nn.Conv2d(d, d, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(d).view(d, d, 1, 1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(d * 9, 3))
        with torch.no_grad():
            w = torch.randn(3, d, 9) * 0.1 + 2.0 * v.view(1, d, 1)  # strongly along v
            self.head[1].weight.copy_(w.reshape(3, -1))

    def forward(self, x):
        return self.head(self.features(x))


def test_project_out_removes_the_direction_and_comes_off_exactly():
    torch.manual_seed(0)
    d = 6
    v = torch.nn.functional.normalize(torch.randn(d), dim=0)
    model = Planted(v).eval()
    x = torch.randn(4, d, 3, 3)
    along = v.view(1, d, 1, 1).expand(4, d, 3, 3)
    before = model(x)
    assert (model(x + 2.0 * along) - before).abs().max() > 1.0  # the logits move along v
    handle = project_out(model, "features", v.numpy()[:, None])
    with torch.no_grad():
        projected = model(x)
        for t in (-3.0, 0.5, 4.0):
            torch.testing.assert_close(model(x + t * along), projected, atol=1e-4, rtol=1e-5)
    # a direction orthogonal to v still moves them
    u = torch.randn(d)
    u = u - (u @ v) * v
    assert (model(x + 3.0 * u.view(1, d, 1, 1)) - projected).abs().max() > 1e-3
    handle.remove()
    assert torch.equal(model(x), before)  # exactly back
    handle.remove()  # twice is fine
    # as a context manager, with a reference point: the component is set to the reference's
    z = torch.randn(d)
    with project_out(model, model.features, v.numpy(), reference=z.numpy()) as p:
        assert p.active
        out = model(x + 5.0 * along)
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-5)
    assert not p.active and torch.equal(model(x), before)


def test_latent_penalty_is_zero_for_a_head_blind_to_the_basis():
    torch.manual_seed(0)
    d = 6
    v = torch.nn.functional.normalize(torch.randn(d), dim=0)
    model = Planted(v).eval()
    x = torch.randn(4, d, 3, 3)
    basis = v[:, None]
    g = torch.Generator().manual_seed(0)
    assert float(latent_penalty(model, x, model.features, basis, generator=g).detach()) > 0.1
    with torch.no_grad():  # remove v from every location's weights: the gradient has no component along v
        w = model.head[1].weight.view(3, d, 9)
        w -= torch.einsum("cdl,d->cl", w, v)[:, None, :] * v.view(1, d, 1)
    assert float(latent_penalty(model, x, model.features, basis, generator=g).detach()) == pytest.approx(0.0, abs=1e-8)


# -- RR-ClArC on the decoy run -------------------------------------------------------------------------------
def test_latent_mode_removes_the_suspect_directions_from_the_head(decoy_run, tmp_path):
    protos = corner_prototypes(decoy_run.run)
    ds, val = decoy_run.data
    model = _model(decoy_run.state)
    ft = PerturbationFinetuner(decoy_run.run.path, FinetuneOptions(prototypes=protos, mode="latent", schedule=("curated",), lr=0.01,
                                                                   control=True, out_dir=tmp_path / "ft"), progress=False)
    basis = ft.latent_basis(model, DataLoader(ds, batch_size=64))
    assert basis.rank >= 1 and basis.prototypes == tuple(protos)
    x = ds.tensors[0][:256]
    v = torch.from_numpy(basis.basis)

    def sensitivity(m):
        m = copy.deepcopy(m).eval()
        return float(latent_penalty(m, x, m.features, v, generator=torch.Generator().manual_seed(5)).detach())

    s0 = sensitivity(model)
    result = ft.fit(model, DataLoader(ds, batch_size=64, shuffle=True), DataLoader(val, batch_size=100))
    assert not result.skipped and result.mode == "latent" and result.latent_rank == basis.rank and result.penalty_weight > 0
    assert sensitivity(model) < 0.5 * s0 and sensitivity(model) < 0.5 * sensitivity(ft.control_model)
    # latent_layers="after": the layers up to the target layer are untouched, the head is not
    state = model.state_dict()
    for k, val0 in decoy_run.state.items():
        if k.startswith("features.") and val0.is_floating_point() and "running" not in k:
            assert torch.equal(state[k], val0), k
    assert not torch.equal(state["head.1.weight"], decoy_run.state["head.1.weight"])
    assert all(p.requires_grad for p in model.parameters())  # put back
    md = result.to_markdown()
    assert "RR-ClArC" in md and "targeting adds" in md and ("within noise" in md or "beyond noise" in md)
    d = result.to_dict()
    assert d["latent_rank"] == basis.rank and set(d["gain_intervals"]) == {"accuracy", "targeting", "control"}
    saved = np.load(tmp_path / "ft" / "predictions.npz")
    assert {"labels", "pred_before", "pred_after", "pred_control"} <= set(saved.files)
    assert (tmp_path / "ft" / "latent_basis.npz").exists()


def test_latent_options_are_checked(decoy_run):
    with pytest.raises(ValueError, match="FinetuneOptions.latent_layers must be one of"):
        FinetuneOptions(mode="latent", latent_layers="head")
    with pytest.raises(ValueError, match="FinetuneOptions.latent_directions"):
        FinetuneOptions(mode="latent", latent_directions=0)
    with pytest.raises(ValueError, match="mode='latent' needs a target layer"):
        PerturbationFinetuner(decoy_run.run.path, FinetuneOptions(prototypes=[1], mode="latent"), reshape_transform=lambda t: t)
    assert FinetuneOptions(mode="latent").to_dict()["latent_layers"] == "after"
