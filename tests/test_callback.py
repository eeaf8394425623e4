"""I2XCallback inside real Lightning runs on real digits."""

from __future__ import annotations

import json
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

import lightning_i2x.record._pipeline as record_module
from lightning_i2x import I2XCallback, I2XRun, ProbePassOptions, ViewOptions
from lightning_i2x.saliency import native_gradcam

from .conftest import TinyCNN, trainer_kwargs


def _loaders(digits):
    train, probe = digits
    return DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100)


def _fit(tmp_path, digits, callback, seed=0, **kw):
    pl.seed_everything(seed, verbose=False)
    model = TinyCNN()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[callback] if callback else [], **kw))
    trainer.fit(model, *_loaders(digits))
    return trainer, model


def test_fit_records_a_run_that_loads_and_explains(tmp_path, digits):
    cb = I2XCallback(digits[1], num_prototypes=8)
    trainer, _ = _fit(tmp_path, digits, cb)
    assert cb.run.path == tmp_path / "lightning_logs" / "version_0" / "i2x"
    run = I2XRun.load(cb.run.path)
    assert run.num_checkpoints == 3 and run.num_prototypes == 8 and run.class_names == [f"d{c}" for c in range(10)]
    assert [c["epoch"] for c in run.checkpoints] == [0, 1, 2]
    assert run.config.target_layer == "features"
    p, y = run.intensities(), run.confidences()
    assert p.shape == (3, 200, 8) and y.shape == (3, 200, 10)
    np.testing.assert_allclose(y.sum(-1), 1, atol=1e-5)
    absent = (run.assignment().reshape(200, -1)[:, :, None] != np.arange(8)).all(axis=1)  # (N, K)
    assert (np.isnan(p) == absent[None]).all() and np.isfinite(p[:, ~absent]).all()
    np.testing.assert_array_equal(run.confidences(), cb.run.confidences())
    expl = run.explain()
    assert expl.beta.shape == (2, 8, 10) and np.abs(expl.beta).max() > 0
    assert any(expl.shared_prototypes(c) for c in range(10))
    assert expl.to_dict()["shared"]
    # the model learned: the probe's true-class confidence rose from the first checkpoint to the last
    labels = run.labels
    assert y[-1][np.arange(200), labels].mean() > y[0][np.arange(200), labels].mean()
    # TensorBoard got the scalars and the summary
    acc = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert len(acc.Scalars("i2x/true_class_confidence")) == 3
    assert len(acc.Scalars("i2x/uncertain_prototypes")) == 3
    text = acc.Tensors("i2x/summary/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "Uncertain prototypes" in text and "### d3" in text


@pytest.mark.parametrize("async_analysis", [True, False])
def test_callback_does_not_change_training(tmp_path, digits, async_analysis):
    kw = dict(deterministic=True, max_epochs=2)
    _, without = _fit(tmp_path / "a", digits, None, **kw)
    cb = I2XCallback(digits[1], num_prototypes=8, probe_pass=ProbePassOptions(cam_target="predicted"), async_analysis=async_analysis)
    _, with_cb = _fit(tmp_path / "b", digits, cb, **kw)
    for (k, a), b in zip(without.state_dict().items(), with_cb.state_dict().values()):
        assert torch.equal(a, b), k


def _native_maps(model, run, probe):
    """The maps native GradCAM gives the model now, outside inference mode and autocast, in fp32."""
    x, y = probe.tensors
    layer = model.get_submodule(run.config.target_layer)
    return native_gradcam(model.float().eval(), layer, x.float(), y).cams.numpy()


def test_validate_records_under_inference_mode(tmp_path, digits):
    cb = I2XCallback(digits[1], num_prototypes=8)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path))
    trainer.callbacks.append(cb)
    torch.manual_seed(0)
    model = TinyCNN()
    trainer.validate(model, _loaders(digits)[1])
    assert cb.run.num_checkpoints == 1
    # validate() runs under inference mode; the record equals native GradCAM outside it (float16 storage)
    np.testing.assert_allclose(cb.run.cams()[0], _native_maps(model, cb.run, digits[1]), atol=2e-3)


def test_mixed_precision(tmp_path, digits):
    cb = I2XCallback(digits[1], num_prototypes=8)
    _, model = _fit(tmp_path, digits, cb, precision="bf16-mixed", max_epochs=2)
    assert cb.run.num_checkpoints == 2
    # the probe pass computes its maps in float32 with autocast off: under bf16-mixed the last record
    # equals the fp32 maps of the final weights up to the run's float16 storage (2e-3)
    np.testing.assert_allclose(cb.run.cams()[-1], _native_maps(model, cb.run, digits[1]), atol=2e-3)


def test_every_n_epochs_and_library_cam(tmp_path, digits):
    cb = I2XCallback(digits[1], target_layer="features", num_prototypes=4, every_n_epochs=2, cam="gradcam++")
    _fit(tmp_path, digits, cb, max_epochs=4)
    assert [c["epoch"] for c in cb.run.checkpoints] == [1, 3]


@pytest.mark.parametrize("async_analysis", [True, False])
def test_failure_is_warned_once_recorded_and_training_goes_on(tmp_path, digits, monkeypatch, async_analysis):
    def broken(*_a, **_k):
        raise RuntimeError("injected k-means failure")

    monkeypatch.setattr(record_module.PrototypeStream, "fit", broken)
    cb = I2XCallback(digits[1], num_prototypes=8, async_analysis=async_analysis)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = _fit(tmp_path, digits, cb)
    ours = [w for w in caught if "I2XCallback" in str(w.message)]
    assert len(ours) == 1 and "injected k-means failure" in str(ours[0].message)
    assert trainer.current_epoch == 3
    assert [e["message"] for e in I2XRun.load(cb.run.path).errors] == ["injected k-means failure"] * 3


@pytest.mark.parametrize("async_analysis", [True, False])
def test_on_error_raise_stops(tmp_path, digits, monkeypatch, async_analysis):
    monkeypatch.setattr(record_module.PrototypeStream, "fit", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _fit(tmp_path, digits, I2XCallback(digits[1], num_prototypes=8, on_error="raise", async_analysis=async_analysis))


def test_async_and_sync_analysis_give_identical_runs_and_explanations(tmp_path, digits):
    runs = {}
    for mode in (True, False):
        cb = I2XCallback(digits[1], num_prototypes=8, run_dir=tmp_path / f"run-{mode}", async_analysis=mode,
                         views=ViewOptions(time_budget=None))
        _fit(tmp_path / f"fit-{mode}", digits, cb, deterministic=True)
        runs[mode] = (I2XRun.load(cb.run.path), cb.explanation)
    (a, ea), (b, eb) = runs[True], runs[False]
    assert a.num_checkpoints == b.num_checkpoints == 3
    for get in (I2XRun.cams, I2XRun.confidences, I2XRun.intensities, I2XRun.assignment, I2XRun.distances):
        np.testing.assert_array_equal(get(a), get(b))
    np.testing.assert_array_equal(a.prototypes.centroids, b.prototypes.centroids)
    assert json.dumps(ea.to_dict()) == json.dumps(eb.to_dict()) == json.dumps(a.explain().to_dict())


def _setup_error(tmp_path, digits, match, probe=None, **kw):
    model = TinyCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = I2XCallback(digits[1] if probe is None else probe, **{"num_prototypes": 8, **kw})
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb]))
    with pytest.raises(ValueError, match=match):
        trainer.fit(model, *_loaders(digits))
    assert trainer.global_step == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "setup changed the model"


def test_setup_errors_come_before_training(tmp_path, digits):
    x, y = digits[1].tensors
    _setup_error(tmp_path, digits, r"'nope' is not a module.*'features'", target_layer="nope")
    _setup_error(tmp_path, digits, r"'head.3' outputs shape \(2, 10\), not a feature map", target_layer="head.3")
    _setup_error(tmp_path, digits, "probe set is empty", probe=(x[:0], y[:0]))
    _setup_error(tmp_path, digits, r"labels \[12\] lie outside the model's 10 classes", probe=(x[:4], torch.tensor([1, 2, 12, 3])))
    _setup_error(tmp_path, digits, r"num_prototypes=40 exceeds the 32 probe feature vectors", probe=(x[:2], y[:2]), num_prototypes=40)
    (tmp_path / "a_file").write_text("")
    _setup_error(tmp_path, digits, "cannot be written", run_dir=tmp_path / "a_file" / "run")
    _setup_error(tmp_path, digits, "3 class names for a model with 10 classes", class_names=["a", "b", "c"])
    _setup_error(tmp_path, digits, r"ViewOptions.classes \['seven', 10\] are not classes of this model", views=ViewOptions(classes=["d7", "seven", 10]))


def test_constructor_errors():
    probe = (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="I2XCallback.cam must be one of"):
        I2XCallback(probe, cam="gradkam")
    with pytest.raises(ValueError, match="cam_target"):
        I2XCallback(probe, probe_pass=ProbePassOptions(cam_target="true"))
    with pytest.raises(ValueError, match="I2XCallback.num_prototypes must be an integer >= 1, got 0"):
        I2XCallback(probe, num_prototypes=0)
    with pytest.raises(ValueError, match="on_error"):
        I2XCallback(probe, on_error="ignore")


def test_probe_forms_agree(tmp_path, digits):
    x, y = digits[1].tensors
    dataset = TensorDataset(x, y)
    shuffled = DataLoader(dataset, batch_size=33, shuffle=True, generator=torch.Generator().manual_seed(5))
    # the order that loader reads: a twin loader over the indices, with the same generator seed
    twin = DataLoader(TensorDataset(torch.arange(len(dataset))), batch_size=33, shuffle=True, generator=torch.Generator().manual_seed(5))
    order = torch.cat([batch[0] for batch in twin]).tolist()
    forms = [(x, y), digits[1], shuffled]
    runs = []
    for i, probe in enumerate(forms):
        cb = I2XCallback(probe, num_prototypes=8, run_dir=tmp_path / f"run{i}")
        trainer = pl.Trainer(**trainer_kwargs(tmp_path))
        trainer.callbacks.append(cb)
        torch.manual_seed(0)
        trainer.validate(TinyCNN(), _loaders(digits)[1], verbose=False)
        runs.append(cb.run)
    np.testing.assert_array_equal(runs[0].cams(), runs[1].cams())
    # a shuffling loader is read once, in its own order: its labels are that permutation of the
    # probe's, and each image keeps its map
    assert sorted(order) == list(range(len(dataset)))
    np.testing.assert_array_equal(runs[2].labels, y.numpy()[order])
    np.testing.assert_allclose(runs[2].cams()[0], runs[0].cams()[0][order], atol=1e-3)
