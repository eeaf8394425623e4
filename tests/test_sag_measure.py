"""SAGMeasure: run by the callback, its scalars in every logger, its SAGs stored, drawn and
reported; checked against direct sag() / mse_stats() calls on the same model and images."""

from __future__ import annotations

import csv
import html
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_i2x import I2XCallback, I2XRun, Recorder, ViewOptions, probe_pass
from lightning_i2x.measures import SAGMeasure, mse_stats, sag, stored_sags
from lightning_i2x.record import open_run
from lightning_i2x.saliency import resolve_target_layer
from lightning_i2x.viz import build_report, drawn_classes, log_figures

from .conftest import TinyCNN, trainer_kwargs
from .test_sag import _trained

FAST = dict(images_per_class=2, max_nodes=10)


class Writer:
    """A TensorBoard ``SummaryWriter`` stand-in that keeps each image's shape by tag."""

    def __init__(self):
        self.images = {}

    def add_scalar(self, *a):
        pass

    def add_text(self, *a):
        pass

    def add_image(self, tag, rgb, step, dataformats):
        self.images[tag] = rgb.shape


def _images(run):
    return torch.from_numpy(np.asarray(run.images, dtype=np.float32))


def test_sag_measure_in_a_fit_logs_stores_draws_and_reports(tmp_path, digits):
    train, probe = digits
    measure = SAGMeasure(**FAST)
    cb = I2XCallback(probe, num_prototypes=6, measures=[measure], views=ViewOptions(time_budget=None, gallery_patches=0))
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    pl.seed_everything(0, verbose=False)
    model = TinyCNN()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], logger=loggers, max_epochs=2, limit_train_batches=8))
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    run = cb.run
    assert run.errors == []
    # the scalars: recorded at every checkpoint, logged as i2x/sag/... to the CSV logger
    series = run.metrics()["sag/multi_mse_share"]
    assert series.shape == (2,) and np.all((series >= 0) & (series <= 1))
    with open(Path(loggers[0].log_dir) / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("i2x/sag/multi_mse_share")]
    assert [float(r["i2x/sag/multi_mse_share"]) for r in rows] == pytest.approx(series.tolist())
    # ... and equal to mse_stats over the chosen images with the model as it ended (= at the last record)
    model.eval()
    chosen = measure.select_images(run, cb.explanation)
    assert chosen and all(1 <= len(v) <= 2 for v in chosen.values())
    idx = [i for v in chosen.values() for i in v]
    x, assignment = _images(run), run.assignment()
    search = dict(fraction=measure.fraction, size_slack=measure.size_slack)
    stats = mse_stats(model, x[idx], run.labels[idx], assignment[idx], **search)
    assert stats["multi_mse_share"] == pytest.approx(series[-1])
    assert stats["mean_mse_size"] == pytest.approx(run.metrics()["sag/mean_mse_size"][-1])
    # the stored SAGs load back equal to a direct sag() of the same image, regions = its prototypes
    stored = stored_sags(I2XRun.load(run.path))
    assert [s.cls for s in stored] == list(chosen) and all(s.checkpoint == 1 for s in stored)
    for s in stored:
        assert s.image == chosen[s.cls][0] and run.labels[s.image] == s.cls
        direct = sag(model, x[s.image], s.cls, assignment[s.image], max_nodes=FAST["max_nodes"], **search)
        assert s.sag == direct
        assert set(np.unique(s.sag.region_map)) == set(np.unique(assignment[s.image]))
    # drawn in TensorBoard, one per drawn class slot
    acc = EventAccumulator(loggers[1].log_dir, size_guidance={"images": 0})
    acc.Reload()
    drawn = drawn_classes(run, cb.explanation, cb.views)
    expected = {f"i2x/class{drawn.index(s.cls) + 1}/sag" for s in stored}
    assert expected and {t for t in acc.Tags()["images"] if t.endswith("/sag")} == expected
    # the report lists the roots as text
    page = build_report(run)
    assert 'id="sag"' in page
    for s in stored:
        for line in s.sag.mse_lines():
            assert line.startswith("P-") or line.startswith("(nothing)")
            assert html.escape(line) in page


def _recorded_run(tmp_path, digits, *, store_images=True):
    model = _trained(digits)
    images, labels = digits[1].tensors
    layer = resolve_target_layer(model, "features", images[:2], forward_fn=lambda m, x: m(x))
    run = open_run(tmp_path / "run", images, labels, [f"d{c}" for c in range(10)], layer, num_prototypes=5,
                   store_images=store_images)
    expl = Recorder(5).record(run, probe_pass(model, layer.module, images, labels), epoch=0, global_step=0)
    return model, run, expl


def test_a_pinned_class_goes_after_the_drawn_slots_and_nothing_changes_in_the_model(tmp_path, digits):
    model, run, expl = _recorded_run(tmp_path, digits)
    model.train()
    model.features[0].weight.requires_grad_(False)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    correct = [c for c in range(10) if ((run.labels == c) & (run.latest_confidences().argmax(1) == c)).any()]
    first, other = correct[:2]
    drawn = ViewOptions(classes=(first,), gallery_patches=0, overlay_samples=0)
    SAGMeasure(classes=[run.class_names[other], first], regions="grid", **FAST)(model, run, None, expl)
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG stream is untouched
    assert model.training and not model.features[0].weight.requires_grad
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [s.cls for s in stored_sags(run)] == [other, first]
    assert stored_sags(run)[0].sag.region_kind == "grid"

    w = Writer()
    log_figures(w, run, expl, 0, drawn)
    assert "i2x/class1/sag" in w.images and "i2x/class2/sag" in w.images  # first in its slot, the other after
    assert len([t for t in w.images if t.endswith("/sag")]) == 2


def test_without_probe_images_the_measure_says_what_to_do(tmp_path, digits):
    model, run, expl = _recorded_run(tmp_path, digits, store_images=False)
    with pytest.raises(ValueError, match="store_images=True"):
        SAGMeasure(**FAST)(model, run, None, expl)


@pytest.mark.parametrize("kw, message", [
    (dict(images_per_class=0), r"SAGMeasure.images_per_class must be an integer >= 1, got 0"),
    (dict(regions="pixels"), r"SAGMeasure.regions must be one of \('prototypes', 'grid'\), got 'pixels'"),
    (dict(when="epoch"), r"SAGMeasure.when must be one of \('record', 'end'\), got 'epoch'"),
    (dict(fraction=1.5), r"SAGMeasure.fraction must be a fraction in \(0, 1\], got 1.5"),
    (dict(size_slack=-1), r"SAGMeasure.size_slack must be an integer >= 0 or None, got -1"),
    (dict(classes=[]), r"SAGMeasure.classes must be a non-empty list of class indices or names, or None, got \[\]"),
    (dict(name="sag/x"), r"SAGMeasure.name must be a non-empty name of letters, digits, '-' and '_', got 'sag/x'"),
    (dict(sigma=0.0), r"SAGMeasure.sigma must be a finite number > 0 or None, got 0.0"),
])
def test_measure_options_fail_at_construction_in_one_pattern(kw, message):
    with pytest.raises(ValueError, match=message):
        SAGMeasure(**kw)


def test_measure_is_a_measure():
    from lightning_i2x.measures import Measure, check_measures

    m = SAGMeasure(classes=3)
    assert isinstance(m, Measure) and m.classes == (3,) and check_measures([m]) == (m,)
