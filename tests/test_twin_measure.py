"""TwinMeasure: stored in the run, drawn for TensorBoard, in the HTML report and the dashboard;
a replaceable context; no side effect on the model; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from werkzeug.test import Client

from lightning_i2x import I2XRun
from lightning_i2x.dashboard import DashboardApp
from lightning_i2x.measures import Measure, TwinMeasure, stored_twin
from lightning_i2x.twin import TwinResult, fit_twin
from lightning_i2x.viz import build_report, log_figures

from .conftest import global_rng_untouched
from .test_sag_measure import Writer, _recorded_run

FAST_FIT = dict(steps=3, strip_images=2, effect_images=32, batch_size=64)


def ink_context(images: np.ndarray) -> dict[str, np.ndarray]:
    """A context any data set can give: the mean intensity and the share of it in the top half."""
    a = images - images.min(axis=(1, 2), keepdims=True)
    total = a.sum(axis=(1, 2)) + 1e-9
    return {"ink": a.mean(axis=(1, 2)), "top": a[:, : a.shape[1] // 2].sum(axis=(1, 2)) / total}


def test_twin_measure_stores_draws_reports_and_serves(tmp_path, digits, one_torch_thread):
    model, run, expl = _recorded_run(tmp_path, digits)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure = TwinMeasure(concepts=("ink", "top"), context=ink_context, target=3, latent_dim=4, epochs=2, fit=FAST_FIT)
    assert isinstance(measure, Measure) and measure.when == "end"
    with global_rng_untouched():
        measure(model, run, None, expl)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    stored = stored_twin(I2XRun.load(run.path))
    assert isinstance(stored, TwinResult) and stored.concepts == ("ink", "top") and stored.target == 3
    assert stored.nodes[-1] == "logit" and not stored.graph[-1].any()  # the logit is a sink
    assert stored.counterfactuals["ink"]["images"].shape == (2, 3, 8, 8)
    metrics = run.metrics()
    assert 0 <= metrics["twin/fidelity"][-1] <= 1 and "twin/alignment_r2/ink" in metrics
    w = Writer()
    log_figures(w, run, expl, 0, measure_views())
    assert {"i2x/twin/graph", "i2x/twin/effects", "i2x/twin/counterfactuals"} <= set(w.images)
    page = build_report(run)
    assert 'id="twin"' in page and 'data-view="twin-graph"' in page and "GLANCE-inspired" in page
    client = Client(DashboardApp(run.path, read_only=True))
    ov = json.loads(client.get("/api/overview").data)
    assert ov["twin"]["target"] == 3 and [c["name"] for c in ov["twin"]["concepts"]] == ["ink", "top"]
    png = client.get("/api/twin.png", query_string={"view": "graph"})
    assert png.status_code == 200 and png.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/api/twin.png", query_string={"view": "nope"}).status_code == 404
    from lightning_i2x.dashboard import build_interactive_report

    assert "api/twin.png?run=" in build_interactive_report(run.path)  # the one-file dashboard carries the figures


def measure_views():
    from lightning_i2x import ViewOptions

    return ViewOptions(gallery_patches=0, overlay_samples=0)


def test_result_round_trips_through_its_dict(digits, one_torch_thread):
    from .test_sag import _trained

    model = _trained(digits)
    r = fit_twin(model, digits[1], concepts=("ink",), context=ink_context, target=1, latent_dim=3, epochs=1, **FAST_FIT)
    back = TwinResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.nodes == r.nodes and np.allclose(back.graph, r.graph, atol=1e-6) and back.effects == r.effects
    assert "| ink |" in r.to_markdown()


def test_bad_input_says_what_to_do(digits):
    from .test_sag import _trained

    model = _trained(digits)
    with pytest.raises(ValueError, match="target must name the class"):
        fit_twin(model, digits[1], concepts=("ink",), context=ink_context)
    with pytest.raises(ValueError, match=r"concepts \['thickness'\] are not features"):
        fit_twin(model, digits[1], concepts=("thickness",), context=ink_context, target=0)
    with pytest.raises(ValueError, match="at least 40 images"):
        fit_twin(model, digits[1].tensors[0][:10], concepts=("ink",), context=ink_context, target=0)
    with pytest.raises(ValueError, match="latent_dim"):
        fit_twin(model, digits[1], concepts=("ink", "top"), context=ink_context, target=0, latent_dim=1)
    with pytest.raises(ValueError, match="TwinMeasure.context"):
        TwinMeasure(context=3)
