"""XFeatureMeasure end to end on the TinyCNN digits: fitted at the end of fit, stored, logged to
TensorBoard, reported, and read by run.explain(concepts="xfeatures"); old runs say what to record."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader
from werkzeug.test import Client

from lightning_i2x import I2XCallback, I2XRun, I2XRunError, ViewOptions, XFeatureMeasure
from lightning_i2x.dashboard import DashboardApp, find_runs
from lightning_i2x.viz import build_report
from lightning_i2x.xfeatures import SRAEOptions, XFeatureExplainer, XFeaturePanel, concept_contributions, stored_xfeatures

from .conftest import TinyCNN, global_rng_untouched, trainer_kwargs

FAST = SRAEOptions(pretrain_epochs=2, epochs=60, lr_step=50)


def test_xfeature_measure_in_a_fit_stores_logs_reports_and_explains(tmp_path, digits, one_torch_thread):
    train, probe = digits
    measure = XFeatureMeasure(classes=(0, 1), n_x=2, options=FAST, top_k=3)
    cb = I2XCallback(probe, num_prototypes=6, measures=[measure], views=ViewOptions(time_budget=None, gallery_patches=0))
    logger = TensorBoardLogger(tmp_path, name="tb")
    pl.seed_everything(0, verbose=False)
    model = TinyCNN()
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, callbacks=[cb], logger=logger, max_epochs=2, limit_train_batches=8))
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    run = I2XRun.load(cb.run.path)
    assert run.errors == []
    assert {"xfeatures", "xfeature-contributions"} <= set(run.attachments)
    panels = stored_xfeatures(run)
    assert [p.class_index for p in panels] == [0, 1] and all(p.n_x == 2 for p in panels)
    for p in panels:  # the stored panel and the fitted one share one frozen base and one dtype
        assert isinstance(p, XFeaturePanel) and p.explained.dtype == np.float64
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.r2 = 0.0
    model.eval()
    with torch.no_grad():
        logits = model(probe.tensors[0]).numpy()
    for p in panels:
        np.testing.assert_allclose(p.score, logits[:, p.class_index], rtol=1e-4, atol=1e-4)  # the network's own score
        assert p.top_images.shape == (2, 3) and p.saliency.shape == (2, 3, *run.feature_shape)
        assert np.all((p.saliency >= 0) & (p.saliency <= 1))
        assert np.isfinite(p.r2) and run.metrics()[f"xfeatures/r2_{p.class_index}"][-1] == pytest.approx(p.r2)
        # the bars sum with the bias to the explained score, which follows the network's
        assert np.corrcoef(p.explained, p.score)[0, 1] > 0.6  # 200 probe images of a barely trained TinyCNN: 0.71 reached
    # the contributions at every checkpoint: the last one is the panels' (same model, same features)
    contributions = run.xfeature_contributions()
    assert contributions.shape == (run.num_checkpoints, run.num_probe, 4)
    np.testing.assert_allclose(contributions[-1], np.concatenate([p.contributions for p in panels], axis=1), rtol=1e-4, atol=1e-4)
    assert run.xfeature_concepts() == [(0, 0), (0, 1), (1, 0), (1, 1)]
    expl = run.explain(concepts="xfeatures")
    assert expl.beta.shape == (run.num_checkpoints - 1, 4, 10)
    assert run.explain().beta.shape[1] == run.num_prototypes  # the prototypes stay the default
    # TensorBoard and the report
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert len([t for t in acc.Tags()["images"] if t.endswith("/xfeatures")]) == 2
    page = build_report(run)
    assert 'id="xfeatures"' in page and page.count('data-view="xfeatures"') == 2
    # the dashboard's overview carries the panels: bars that sum to the explained score
    app = DashboardApp(tmp_path)
    (name,) = [n for n, path in find_runs(tmp_path).items() if Path(path).resolve() == Path(run.path).resolve()]
    ov = Client(app).get(f"/api/overview?run={name}").get_json()
    assert [x["class"] for x in ov["xfeatures"]] == [0, 1]
    for x, p in zip(ov["xfeatures"], panels):
        assert x["n_x"] == 2 and x["top_images"] == p.top_images.tolist()
        for b in x["bars"]:
            assert sum(b["contributions"]) + b["bias"] == pytest.approx(b["explained"], rel=1e-3, abs=1e-3)  # JSON rounds


def test_runs_without_pooled_features_or_contributions_say_what_to_do(tmp_path, digits, one_torch_thread):
    _, probe = digits
    x, y = probe.tensors
    torch.manual_seed(0)
    model = TinyCNN().eval()
    run = I2XRun.create(tmp_path / "old", labels=y.numpy(), class_names=probe.classes, feature_shape=(8, 8), num_prototypes=2)
    from lightning_i2x.prototypes import fit_prototypes

    rng = np.random.default_rng(0)
    for t in range(2):  # recorded as before 0.3: no pooled features
        run.append_checkpoint(rng.random((200, 8, 8)), rng.dirichlet(np.ones(10), 200), epoch=t, global_step=t)
    protos, assignment = fit_prototypes(rng.random((200 * 64, 4)).astype(np.float32), 2)[:2]
    run.set_prototypes(protos, assignment.reshape(200, 8, 8), reference=1)
    run = I2XRun.load(run.path)
    with pytest.raises(I2XRunError, match="holds no x-feature contributions: add XFeatureMeasure"):
        run.explain(concepts="xfeatures")
    with pytest.raises(ValueError, match="concepts must be one of"):
        run.explain(concepts="channels")
    params = {k: v.clone() for k, v in model.state_dict().items()}
    with global_rng_untouched():
        explainer = XFeatureExplainer([3], n_x=1, options=FAST).fit(model, x, target_layer="features.3")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in params.items())
    with pytest.raises(I2XRunError, match="without pooled features.*record the run again with lightning-i2x >= 0.3"):
        concept_contributions(run, explainer)
