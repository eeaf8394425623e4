"""FaithfulnessMeasure: equals deletion_insertion on its seeded subset, beats chance on planted
ground truth, follows cam_target, leaves the model alone, and reaches the loggers, the run and the
report through a Lightning fit; cam="igos" / "igos++" through the probe pass and the callback."""

from __future__ import annotations

import csv
import dataclasses
import random
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_i2x import I2XCallback, I2XRun, ProbePassOptions
from lightning_i2x.measures import FaithfulnessMeasure, Measure, deletion_insertion, random_maps
from lightning_i2x.options import IGOSOptions
from lightning_i2x.record import ProbeEvidence
from lightning_i2x.saliency import CAM_METHODS, igos_probe_batch, probe_batches
from lightning_i2x.viz import build_report, plot_faithfulness

from .conftest import TinyCNN, trainer_kwargs
from .test_faithfulness import REGION, RegionModel, planted_images

KEYS = ("deletion_auc", "insertion_auc", "deletion_auc_random", "insertion_auc_random")


pytestmark = pytest.mark.usefixtures("one_torch_thread")




class FakeRun:
    """What the measure uses of an I2XRun: its config, record_metrics and save_attachment."""

    def __init__(self, cam_target="label"):
        self.config = SimpleNamespace(probe_pass=ProbePassOptions(cam_target=cam_target))
        self.metrics, self.attachments = {}, {}

    def record_metrics(self, values):
        self.metrics.update(values)

    def save_attachment(self, name, *, arrays):
        self.attachments[name] = arrays


def planted_evidence(n=10):
    """Maps (7x7) that are high exactly on the cells covering the planted region, and confidences."""
    x = planted_images(n)
    maps = torch.zeros(n, 7, 7)
    maps[:, REGION[0].start // 4 : (REGION[0].stop + 3) // 4, REGION[1].start // 4 : (REGION[1].stop + 3) // 4] = 1.0
    maps += 0.01 * torch.rand(n, 7, 7, generator=torch.Generator().manual_seed(1))
    confidences = torch.softmax(torch.randn(n, 10, generator=torch.Generator().manual_seed(2)), 1)
    return ProbeEvidence(None, maps, confidences, None, x, torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("kw, message", [
    (dict(images=0), r"FaithfulnessMeasure.images must be an integer >= 1 or None, got 0"),
    (dict(images=2.5), r"FaithfulnessMeasure.images must be an integer >= 1 or None, got 2.5"),
    (dict(steps=True), r"FaithfulnessMeasure.steps must be an integer >= 1, got True"),
    (dict(fill="zeros"), r"FaithfulnessMeasure.fill must be one of \("),
    (dict(seed=-1), r"FaithfulnessMeasure.seed must be an integer >= 0, got -1"),
    (dict(batch_size=0), r"FaithfulnessMeasure.batch_size must be an integer >= 1, got 0"),
    (dict(name="a/b"), r"FaithfulnessMeasure.name must be a non-empty name"),
    (dict(when="epoch"), r"FaithfulnessMeasure.when must be one of \('record', 'end'\), got 'epoch'"),
])
def test_bad_options_fail_at_construction(kw, message):
    with pytest.raises(ValueError, match=message):
        FaithfulnessMeasure(**kw)


def test_is_a_measure_and_needs_the_probe_in_the_evidence():
    m = FaithfulnessMeasure()
    assert isinstance(m, Measure) and m.name == "faithfulness" and m.when == "record"
    ev = dataclasses.replace(planted_evidence(4), images=None)
    with pytest.raises(ValueError, match="needs the probe images and labels"):
        m(RegionModel(), FakeRun(), ev, None)


def test_equals_deletion_insertion_on_its_seeded_subset_and_beats_chance_on_planted_maps():
    model, ev, run = RegionModel(), planted_evidence(10), FakeRun()
    m = FaithfulnessMeasure(images=6, steps=8, seed=3)
    values = m(model, run, ev, None)
    idx = m.subset(10)
    assert idx.tolist() == sorted(torch.randperm(10, generator=torch.Generator().manual_seed(3))[:6].tolist())
    assert m.subset(10).tolist() == idx.tolist() and FaithfulnessMeasure(images=50).subset(10).tolist() == list(range(10))
    x, y = ev.images[idx], ev.labels[idx]
    ref = deletion_insertion(model, x, y, ev.cams[idx], steps=8)
    chance = deletion_insertion(model, x, y, random_maps(6, (7, 7), seed=3), steps=8)
    expected = [ref.mean_deletion_auc, ref.mean_insertion_auc, chance.mean_deletion_auc, chance.mean_insertion_auc]
    assert [values[f"faithfulness/{k}"] for k in KEYS] == pytest.approx(expected, abs=1e-12)
    assert run.metrics == values
    arrays = run.attachments["faithfulness"]
    assert arrays["indices"].tolist() == idx.tolist() and arrays["deletion_auc"].shape == (6,) and arrays["deletion_curve"].shape == (9,)
    # the planted maps point at the only pixels the model reads: far better than a random order
    assert values["faithfulness/deletion_auc"] < values["faithfulness/deletion_auc_random"] - 0.2
    assert values["faithfulness/insertion_auc"] > values["faithfulness/insertion_auc_random"] + 0.05


def test_scores_the_predicted_class_when_the_run_explains_predictions():
    model, ev = RegionModel(), planted_evidence(6)
    values = FaithfulnessMeasure(images=None, steps=4)(model, FakeRun("predicted"), ev, None)
    ref = deletion_insertion(model, ev.images, ev.confidences.argmax(1), ev.cams, steps=4)
    assert ev.confidences.argmax(1).ne(ev.labels).any()
    assert values["faithfulness/deletion_auc"] == pytest.approx(ref.mean_deletion_auc, abs=1e-12)
    assert values["faithfulness/insertion_auc"] == pytest.approx(ref.mean_insertion_auc, abs=1e-12)


def test_no_side_effects_on_the_model_or_the_rng():
    torch.manual_seed(0)
    model = TinyCNN().train()
    x = torch.randn(8, 1, 8, 8)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    bn = model.features[1]
    stats = (bn.running_mean.clone(), bn.num_batches_tracked.clone())
    ev = ProbeEvidence(None, torch.rand(8, 4, 4), torch.softmax(torch.randn(8, 10), 1), None, x, torch.arange(8))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    FaithfulnessMeasure(images=4, steps=4, fill="noise")(model, FakeRun(), ev, None)
    assert torch.equal(torch.rand(3), expected)
    assert np.random.rand() == np.random.RandomState(5).rand() and random.random() == random.Random(5).random()
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.num_batches_tracked, stats[1])


def test_fit_logs_the_four_scalars_keeps_them_in_the_run_and_the_report_draws_them(tmp_path, digits):
    train, probe = digits
    cb = I2XCallback(probe, num_prototypes=6, measures=[FaithfulnessMeasure(images=16, steps=8)], views=False)
    logger = CSVLogger(tmp_path, name="csv")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[cb], logger=logger, limit_train_batches=6))
    trainer.fit(TinyCNN(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    assert not cb.run.errors
    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    for key in KEYS:
        logged = [float(r[f"i2x/faithfulness/{key}"]) for r in rows if r.get(f"i2x/faithfulness/{key}")]
        assert len(logged) == 2 and all(0 <= v <= 1 for v in logged)
    run = I2XRun.load(cb.run.path)
    series = run.metrics()
    assert all(series[f"faithfulness/{k}"].shape == (2,) and np.isfinite(series[f"faithfulness/{k}"]).all() for k in KEYS)
    assert run.attachment("faithfulness")[1] == 1
    # the maps of a trained model beat a random order on the probe
    assert series["faithfulness/insertion_auc"][-1] - series["faithfulness/deletion_auc"][-1] > (
        series["faithfulness/insertion_auc_random"][-1] - series["faithfulness/deletion_auc_random"][-1])
    html = build_report(run, classes=[0], max_pairs=0, gallery_patches=0)
    assert 'id="view-faithfulness" data-view="faithfulness"' in html
    fig = plot_faithfulness(run)
    styles = [line.get_linestyle() for line in fig.axes[0].lines]
    assert styles.count("--") == 2 and styles.count("-") == 2


SMALL_IGOS = IGOSOptions(iterations=2, ig_iter=3)  # the authors' 15 x 20 is too slow for a unit test


def test_probe_batches_dispatch_igos_methods():
    assert {"igos", "igos++"} <= set(CAM_METHODS)
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([1, 2, 3, 4, 5])
    for method in ("igos", "igos++"):
        (whole,) = probe_batches(model, model.features, x, y, cam=method, batch_size=5, igos=SMALL_IGOS.igos_kwargs())
        direct = igos_probe_batch(model, model.features, x, y, method=method, **SMALL_IGOS.igos_kwargs())
        assert torch.allclose(whole.cams, direct.cams) and torch.equal(whole.activations, direct.activations)
        assert torch.allclose(whole.confidences, direct.confidences)
        assert [b.cams.shape[0] for b in probe_batches(model, model.features, x, y, cam=method, batch_size=3,
                                                      igos=SMALL_IGOS.igos_kwargs())] == [3, 2]


def test_fit_with_cam_igos_records_igos_maps(tmp_path, digits):
    """The I-GOS settings reach the probe pass through the callback (ProbePassOptions.igos) and
    are stored with the run."""
    train, probe = digits
    small = TensorDataset(*(t[:20] for t in probe.tensors))
    for cam in ("igos", "igos++"):
        cb = I2XCallback(small, num_prototypes=4, cam=cam, views=False, run_dir=tmp_path / cam, probe_pass=ProbePassOptions(igos=SMALL_IGOS))
        pl.seed_everything(0, verbose=False)
        trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[cb], logger=False, limit_train_batches=4))
        model = TinyCNN()
        trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True), DataLoader(small, batch_size=20))
        run = I2XRun.load(cb.run.path)
        assert not run.errors and run.config.cam == cam and run.num_checkpoints == 1 and run.config.probe_pass.igos == SMALL_IGOS
        cams = run.cams()[0]
        assert cams.shape == (20, 4, 4)
        # the one record was made with the final weights: it equals the direct computation on them
        # (the same small settings), up to the run's float16 storage
        x, y = small.tensors
        direct = igos_probe_batch(model.eval(), model.features, x, y, method=cam, **SMALL_IGOS.igos_kwargs()).cams.numpy()
        np.testing.assert_allclose(cams, direct, atol=2e-3)
