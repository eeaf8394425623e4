"""The record pipeline without a Trainer, typed options and run configuration, format-1 runs, the
run's caches, every Lightning logger, and the callback's state key and pickling."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_i2x import (
    ExplainOptions,
    FinetuneOptions,
    I2XCallback,
    I2XRun,
    I2XRunError,
    ProbePassOptions,
    PrototypeOptions,
    Recorder,
    RunConfig,
    ViewOptions,
    probe_pass,
)
from lightning_i2x.options import IGOSOptions, OptionsError
from lightning_i2x.record import open_run
from lightning_i2x.saliency import resolve_target_layer

from .conftest import TinyCNN, trainer_kwargs

FIXTURES = Path(__file__).parent / "fixtures"


# -- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("group, kw, message", [
    (ExplainOptions, dict(shared_frac=0), r"ExplainOptions.shared_frac must be a fraction in \(0, 1\], got 0"),
    (ExplainOptions, dict(tau="often"), r"ExplainOptions.tau must be a finite number >= 0, got 'often'"),
    (ExplainOptions, dict(min_flips=True), r"ExplainOptions.min_flips must be an integer >= 1, got True"),
    (ExplainOptions, dict(min_cluster_size=1), r"ExplainOptions.min_cluster_size must be an integer >= 2 or None, got 1"),
    (PrototypeOptions, dict(pca_components=0), r"PrototypeOptions.pca_components must be an integer >= 1, got 0"),
    (ProbePassOptions, dict(cam_target="true"), r"ProbePassOptions.cam_target must be one of \('label', 'predicted'\), got 'true'"),
    (ProbePassOptions, dict(batch_size=2.5), r"ProbePassOptions.batch_size must be an integer >= 1, got 2.5"),
    (FinetuneOptions, dict(schedule="curated"), r"FinetuneOptions.schedule must be a non-empty sequence"),
    (FinetuneOptions, dict(lr=-1.0), r"FinetuneOptions.lr must be a finite number > 0 or None, got -1.0"),
    (FinetuneOptions, dict(trainer_kwargs={"max_epochs": 3}), r"FinetuneOptions.trainer_kwargs must be free of the keys"),
    (ViewOptions, dict(figures="yes"), r"ViewOptions.figures must be True or False, got 'yes'"),
])
def test_every_option_group_fails_at_construction_in_one_pattern(group, kw, message):
    with pytest.raises(ValueError, match=message):
        group(**kw)


def test_options_round_trip_and_refuse_unknown_names():
    for group in (ExplainOptions(tau=0.3, min_cluster_size=7), PrototypeOptions(seed=4), ProbePassOptions(batch_size=3),
                  ViewOptions(classes=[1, "b"], time_budget=None), FinetuneOptions(pairs=[(1, 2)], schedule=["full"])):
        assert type(group).from_dict(json.loads(json.dumps(group.to_dict()))) == group
    with pytest.raises(OptionsError, match=r"ExplainOptions has no option\(s\) \['min_flip'\]"):
        ExplainOptions.from_dict({"min_flip": 2}, strict=False)
    with pytest.raises(OptionsError, match=r"ExplainOptions is missing \['tau'"):
        ExplainOptions.from_dict({k: v for k, v in ExplainOptions().to_dict().items() if k != "tau"})


# -- the pipeline without a Trainer ----------------------------------------------------------------
def _evidence(model, probe, **kw):
    images, labels = probe.tensors
    layer = resolve_target_layer(model, "features", images[:2], forward_fn=lambda m, x: m(x))
    return layer, probe_pass(model, layer.module, images, labels, **kw)


def test_recorder_appends_refits_and_explains_from_cached_arrays(tmp_path, digits):
    torch.manual_seed(0)
    model = TinyCNN()
    probe = digits[1]
    layer, evidence = _evidence(model, probe, options=ProbePassOptions(batch_size=64))
    run = open_run(tmp_path / "run", *probe.tensors, [f"d{c}" for c in range(10)], layer, num_prototypes=6)
    recorder = Recorder(6, explain=ExplainOptions(min_flips=1))
    expl = None
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        _, evidence = _evidence(model, probe)
        expl = recorder.record(run, evidence, epoch=step, global_step=10 * step)
    assert run.num_checkpoints == 3 and expl.num_intervals == 2
    # the explanation carries the intensities it was built from: the run's cached array, computed once
    assert expl.intensities is run.intensities()
    assert run.cams() is run.cams() and not run.cams().flags.writeable
    # brute force: intensity = mean map value over each prototype's locations
    cams, a = run.cams().reshape(3, 200, -1), run.assignment().reshape(200, -1)
    i, k = 7, int(a[7, 0])
    np.testing.assert_allclose(expl.intensities[:, i, k], cams[:, i, a[i] == k].mean(axis=1), rtol=1e-6)
    # appending drops the caches; a reloaded run explains identically
    before = run.intensities()
    recorder.record(run, evidence, epoch=3, global_step=40)
    assert run.intensities() is not before and run.intensities().shape[0] == 4
    again = I2XRun.load(run.path).explain(ExplainOptions(min_flips=1))
    np.testing.assert_array_equal(again.beta, recorder.explain_run(run).beta)
    run.truncate(2)
    assert run.cams().shape[0] == 2


def test_the_run_stores_a_typed_config_and_refuses_a_damaged_one(tmp_path, digits):
    torch.manual_seed(0)
    model = TinyCNN()
    layer, evidence = _evidence(model, digits[1])
    config = RunConfig("features", "gradcam", 2, ProbePassOptions(cam_target="predicted"), PrototypeOptions(seed=3),
                       ExplainOptions(min_flips=3, saliency_threshold=0.6))
    run = open_run(tmp_path / "run", *digits[1].tensors, [str(c) for c in range(10)], layer, num_prototypes=5, config=config)
    Recorder(5).record(run, evidence, epoch=0, global_step=1)
    loaded = I2XRun.load(run.path)
    assert loaded.config == config and loaded.format_version == 2
    # explain() defaults to the recorded options: the threshold of presence is the stored one
    assert loaded.explain().params["saliency_threshold"] == 0.6 and loaded.explain().params["min_flips"] == 3
    np.testing.assert_array_equal(loaded.explain().presence, loaded.presence(threshold=0.6))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['min_flip'\]"):
        loaded.explain(min_flip=2)
    manifest = json.loads((run.path / "manifest.json").read_text())
    for edit, what in ((lambda c: c["explain"].update(min_flipz=2), "min_flipz"),
                       (lambda c: c["prototypes"].pop("seed"), "missing \\['seed'\\]"),
                       (lambda c: c.pop("cam"), "missing \\['cam'\\]"),
                       (lambda c: c["explain"].update(tau=-1), "ExplainOptions.tau")):
        damaged = json.loads(json.dumps(manifest))
        edit(damaged["config"])
        (run.path / "manifest.json").write_text(json.dumps(damaged))
        with pytest.raises(I2XRunError, match=what):
            I2XRun.load(run.path)


def test_a_version_1_run_loads_and_explains_as_its_re_saved_copy(tmp_path):
    """tests/fixtures/run_v1 was recorded by lightning-i2x 0.1.0 (4 checkpoints on digits, K=6,
    explain_kwargs={"min_flips": 1}). Loaded, then re-saved in the current format, it explains the
    same: the reader of version 1 loses nothing a new run keeps (whether the explanation itself is
    right is what the planted tests check, not a frozen copy of its numbers)."""
    shutil.copytree(FIXTURES / "run_v1", tmp_path / "run")
    run = I2XRun.load(tmp_path / "run")
    assert run.format_version == 1
    # the options added after 0.2 read as 0.2 behaved (ExplainOptions.LEGACY), whatever new runs default to
    assert run.config == RunConfig("features", "gradcam", 1, ProbePassOptions(igos=IGOSOptions.legacy()), PrototypeOptions(),
                                   ExplainOptions(min_flips=1, uncertain_rule="difference", significance="tau"))
    copy = I2XRun.create(tmp_path / "v2", labels=run.labels, class_names=run.class_names, feature_shape=run.feature_shape,
                         num_prototypes=run.num_prototypes, config=run.config, images=run.images)
    cams, confidences = run.cams(), run.confidences()
    for i, c in enumerate(run.checkpoints):
        copy.append_checkpoint(cams[i], confidences[i], epoch=c["epoch"], global_step=c["global_step"])
    copy.set_prototypes(run.prototypes, run.assignment(), reference=run.reference, distances=run.distances())
    copy = I2XRun.load(tmp_path / "v2")
    assert copy.format_version > 1 and copy.config == run.config
    np.testing.assert_array_equal(copy.cams(), cams)
    np.testing.assert_array_equal(copy.confidences(), confidences)
    got = json.loads(json.dumps(run.explain().to_dict()))
    expected = json.loads(json.dumps(copy.explain().to_dict()))
    assert got.keys() == expected.keys()
    for key in expected:
        if key == "beta":
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-15)
        else:
            assert got[key] == expected[key], key
    assert len(run.explain().uncertain) > 0


# -- loggers ---------------------------------------------------------------------------------------
class ImageLogger(Logger):
    """A logger of the W&B kind: ``log_image`` and ``log_text`` besides metrics."""

    def __init__(self):
        super().__init__()
        self.metrics, self.images, self.texts = [], [], []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_image(self, key, images, step=None):
        self.images.append((key, images[0].shape, step))

    def log_text(self, key, columns, data, step=None):
        self.texts.append((key, data[0][0], step))


def test_every_logger_gets_the_views(tmp_path, digits):
    train, probe = digits
    cb = I2XCallback(probe, num_prototypes=6, views=ViewOptions(time_budget=None))
    memory = ImageLogger()
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb"), memory]
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], logger=loggers, max_epochs=2, limit_train_batches=6))
    trainer.fit(TinyCNN(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    steps = [c["global_step"] for c in cb.run.checkpoints]
    with open(Path(loggers[0].log_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    logged = [r for r in rows if r.get("i2x/true_class_confidence")]
    assert [int(r["step"]) for r in logged] == steps
    conf = cb.run.latest_confidences()[np.arange(200), cb.run.labels].mean()
    assert float(logged[-1]["i2x/true_class_confidence"]) == pytest.approx(conf, rel=1e-6)
    assert any(k.startswith("i2x/confidence/d") for k in logged[-1])
    acc = EventAccumulator(loggers[1].log_dir, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("i2x/true_class_confidence")] == steps
    assert "i2x/gallery" in acc.Tags()["images"]
    assert {k for m, _ in memory.metrics for k in m} >= {"i2x/true_class_confidence", "i2x/uncertain_prototypes"}
    assert {key for key, _, _ in memory.images} >= {"i2x/gallery", "i2x/beta"}
    assert all(len(shape) == 3 and shape[2] == 3 for _, shape, _ in memory.images)
    assert any(key == "i2x/summary" and "Uncertain prototypes" in text for key, text, _ in memory.texts)


def test_a_csv_only_fit_draws_nothing_but_logs_the_scalars(tmp_path, digits, monkeypatch):
    import lightning_i2x.callbacks._i2x as callback_module

    drawn = []
    monkeypatch.setattr(callback_module, "log_figures", lambda *a, **k: drawn.append(1))
    train, probe = digits
    cb = I2XCallback(probe, num_prototypes=6)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], logger=logger, max_epochs=1, limit_train_batches=3))
    trainer.fit(TinyCNN(), DataLoader(train, batch_size=64), DataLoader(probe, batch_size=100))
    assert drawn == []  # no logger takes images: nothing is drawn
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert "i2x/true_class_confidence" in header and "i2x/uncertain_prototypes" in header


# -- the callback as Lightning tests its callbacks ---------------------------------------------------
def test_state_key_tells_instances_apart_and_the_callback_pickles(tmp_path, digits):
    probe = digits[1]
    a = I2XCallback(probe, run_dir=tmp_path / "a", num_prototypes=4)
    b = I2XCallback(probe, run_dir=tmp_path / "b", num_prototypes=4)
    c = I2XCallback(probe, run_dir=tmp_path / "a", target_layer="features", num_prototypes=4)
    assert len({a.state_key, b.state_key, c.state_key}) == 3
    assert a.state_key.startswith("I2XCallback")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[a], max_epochs=1, limit_train_batches=3, logger=False))
    trainer.fit(TinyCNN(), DataLoader(digits[0], batch_size=64), DataLoader(probe, batch_size=100))
    copy = pickle.loads(pickle.dumps(a))
    assert copy.run is None and copy.state_key == a.state_key and copy.explain == a.explain
    state = pickle.loads(pickle.dumps(a.state_dict()))
    assert state["num_checkpoints"] == 1 and state["run_dir"] == str(tmp_path / "a")


def test_metrics_and_attachments_belong_to_their_checkpoint(tmp_path, digits):
    torch.manual_seed(0)
    model = TinyCNN()
    layer, evidence = _evidence(model, digits[1])
    run = open_run(tmp_path / "run", *digits[1].tensors, [str(c) for c in range(10)], layer, num_prototypes=4)
    rec = Recorder(4)
    for t in range(3):
        rec.append(run, evidence, epoch=t, global_step=t)
        run.record_metrics({"deletion_auc": 0.1 * t})
    run.record_metrics({"insertion_auc": 0.9}, checkpoint=1)
    run.save_attachment("sag", data={"mses": [[3, 17]]})
    run.save_attachment("reliance", arrays={"drop": np.arange(4.0)}, checkpoint=1)
    loaded = I2XRun.load(run.path)
    m = loaded.metrics()
    np.testing.assert_allclose(m["deletion_auc"], [0.0, 0.1, 0.2])
    np.testing.assert_array_equal(np.isnan(m["insertion_auc"]), [True, False, True])
    assert loaded.attachment("sag") == ({"mses": [[3, 17]]}, 2)
    arrays, at = loaded.attachment("reliance")
    np.testing.assert_array_equal(arrays["drop"], np.arange(4.0))
    assert at == 1
    assert loaded.attachment("nothing") is None and loaded.attachments == ["reliance", "sag"]
    # a resume that drops checkpoint 2 drops what was measured there, files included
    loaded.truncate(2)
    assert loaded.attachments == ["reliance"] and not (run.path / "attachments" / "sag-00002.json").exists()
    assert list(I2XRun.load(run.path).metrics()["deletion_auc"]) == [0.0, pytest.approx(0.1)]
    with pytest.raises(ValueError, match="exactly one of"):
        loaded.save_attachment("x")
    with pytest.raises(TypeError, match="metrics must map names to numbers"):
        loaded.record_metrics({"a": "high"})
    (run.path / "attachments" / "reliance-00001.npz").write_bytes(b"garbage")
    with pytest.raises(I2XRunError, match="reliance-00001.npz is damaged"):
        I2XRun.load(run.path).attachment("reliance")
