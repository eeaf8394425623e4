"""The twin on the planted causal chain (examples/planted_chain.py): MNIST re-rendered with
slant -> thickness -> label; a CNN trained on it; the graph, the effects and the counterfactuals
must show the planted structure, and a classifier trained on slant must swap the roles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from lightning_i2x.twin import fit_twin  # noqa: E402

N_IMAGES = 1500


@pytest.fixture(scope="module")
def chain(local_data_dir):
    from demo_data import load_mnist
    from planted_chain import render_chain

    x = load_mnist(True, local_data_dir).tensors[0][:N_IMAGES, 0].numpy() * 0.5 + 0.5
    return render_chain(x, seed=0)


def fitted(chain, role):
    from planted_chain import labels_of, train_classifier

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_classifier(chain["images"], labels_of(chain, role), epochs=5, seed=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = fit_twin(model, torch.from_numpy(chain["images"]), seed=0)
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "fit_twin changed the model"
    return result


@pytest.mark.slow
def test_the_rendering_plants_the_chain(chain):
    slope = np.polyfit(chain["slant"], chain["thickness"], 1)[0]
    assert 0.55 < slope < 1.0, slope  # 0.8 planted; the rendering's own error attenuates it a little
    assert np.corrcoef(chain["slant"], chain["planted_slant"])[0, 1] > 0.99


@pytest.mark.slow
def test_thickness_classifier_graph_effects_and_counterfactuals(chain):
    r = fitted(chain, "thickness")
    assert r.has_edge("slant", "thickness") and r.has_edge("thickness", "logit"), r.edges()
    assert not r.has_edge("slant", "logit") and not r.has_edge("thickness", "slant"), r.edges()
    e = r.effects
    assert e["thickness"]["total"] > 1.0  # do(thickness) moves the logit
    assert e["slant"]["direct"] == 0.0
    ratio = e["slant"]["mediated"] / e["thickness"]["total"]
    assert 0.6 <= ratio <= 1.0, ratio  # 0.8 planted, within 25 %
    assert e["thickness"]["decoded_total"] > 0
    measured = r.counterfactuals["thickness"]["mean_measured"]
    assert np.all(np.diff(measured) > 0), measured  # re-measured thickness rises with do(thickness)
    assert r.intended["thickness"] > 0.8 and r.intended["slant"] > 0.8


@pytest.mark.slow
def test_slant_classifier_swaps_the_roles(chain):
    r = fitted(chain, "slant")
    assert r.has_edge("slant", "logit") and not r.has_edge("thickness", "logit"), r.edges()
    assert r.has_edge("slant", "thickness"), r.edges()
    assert r.effects["slant"]["direct"] > 1.0 and r.effects["thickness"]["total"] == 0.0
