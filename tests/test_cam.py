"""The probe pass: native GradCAM equals pytorch-grad-cam's, and leaves no trace on the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from lightning_i2x.cam import CAM_METHODS, library_cam, native_gradcam, probe_batches

from .conftest import TinyCNN


_TRAINED: dict = {}


def _trained_model(digits, steps=60):
    """A briefly trained TinyCNN (trained once per session, a fresh copy per call)."""
    if "state" in _TRAINED:
        model = TinyCNN()
        model.load_state_dict(_TRAINED["state"])
        return model.eval()
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = digits[0].tensors
    for i in range(steps):
        sl = slice((i * 64) % 1400, (i * 64) % 1400 + 64)
        opt.zero_grad()
        F.cross_entropy(model(x[sl]), y[sl]).backward()
        opt.step()
    _TRAINED["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    return model.eval()


def _library_gradcam_at_feature_resolution(model, layer, x, targets):
    """pytorch-grad-cam's own GradCAM, asked for maps at the layer's h x w."""
    with torch.no_grad():
        h, w = model.features(x[:1]).shape[-2:]
    cam = GradCAM(model=model, target_layers=[layer])
    cam.get_target_width_height = lambda _x: (w, h)
    try:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        cam.activations_and_grads.release()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_gradcam_equals_pytorch_grad_cam(digits, dtype):
    model = _trained_model(digits).to(dtype)
    x, y = digits[1].tensors
    x = x.to(dtype)
    ours = native_gradcam(model, model.features, x, y).cams.numpy()
    theirs = _library_gradcam_at_feature_resolution(model, model.features, x, y)
    assert ours.shape == theirs.shape == (200, 4, 4)
    assert np.abs(ours - theirs).max() < 1e-5
    assert ours.max() > 0.99 and ours.min() >= 0  # normalised, not blank


def test_predicted_target_equals_library_with_no_targets(digits):
    model = _trained_model(digits)
    x, _ = digits[1].tensors
    ours = native_gradcam(model, model.features, x, None).cams.numpy()
    cam = GradCAM(model=model, target_layers=[model.features])
    cam.get_target_width_height = lambda _x: (4, 4)
    theirs = cam(input_tensor=x, targets=None)
    cam.activations_and_grads.release()
    assert np.abs(ours - theirs).max() < 1e-5


def test_same_forward_gives_activations_and_confidences(digits):
    model = _trained_model(digits)
    x, y = digits[1].tensors
    rec = native_gradcam(model, model.features, x, y)
    with torch.no_grad():
        assert torch.allclose(rec.activations, model.features(x), atol=1e-6)
        assert torch.allclose(rec.confidences, torch.softmax(model(x), 1), atol=1e-6)
    assert torch.allclose(rec.confidences.sum(1), torch.ones(200))


def _model_state(model):
    return (
        [m.training for m in model.modules()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def _assert_same_state(before, after):
    assert before[0] == after[0], "train/eval mode changed"
    for g0, g1 in zip(before[1], after[1]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1), ".grad changed"
    assert before[2] == after[2], "hooks left registered"
    for k in before[3]:
        assert torch.equal(before[3][k], after[3][k]), f"{k} changed"


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "layercam", "hirescam", "xgradcam"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_probe_pass_leaves_no_trace(digits, method, mode):
    model = _trained_model(digits)
    model.train(mode == "train")
    model.head[0].eval()  # a mixed mode must survive too
    x, y = digits[1].tensors
    F.cross_entropy(model(x[:16]), y[:16]).backward()  # gradients the optimiser has not used yet
    before = _model_state(model)
    batches = list(probe_batches(model, model.features, x, y, cam=method, batch_size=64))
    _assert_same_state(before, _model_state(model))
    cams = torch.cat([b.cams for b in batches])
    assert cams.shape == (200, 4, 4) and torch.isfinite(cams).all() and cams.max() > 0.5


def test_library_methods_at_feature_resolution(digits):
    model = _trained_model(digits)
    x, y = digits[1].tensors
    ours = native_gradcam(model, model.features, x[:32], y[:32]).cams
    via_library = library_cam(model, model.features, x[:32], y[:32], method="gradcam").cams
    assert torch.allclose(ours, via_library, atol=1e-5)
    assert set(CAM_METHODS) >= {"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"}


def test_probe_pass_under_no_grad_inference_mode_and_autocast(digits):
    model = _trained_model(digits)
    x, y = digits[1].tensors
    ref = native_gradcam(model, model.features, x, y).cams
    with torch.no_grad():
        assert torch.allclose(native_gradcam(model, model.features, x, y).cams, ref)
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor, as Lightning's validate() hands out
        out = native_gradcam(model, model.features, xi, y).cams
    assert torch.allclose(out, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = native_gradcam(model, model.features, x, y)
    assert out.cams.dtype == torch.float32 and torch.allclose(out.cams, ref)


def test_raw_maps_option(digits):
    model = _trained_model(digits)
    x, y = digits[1].tensors
    raw = native_gradcam(model, model.features, x, y, normalise=False).cams
    norm = native_gradcam(model, model.features, x, y).cams
    assert raw.max() > 1.01 or raw.max() < 0.99  # not normalised
    flat = raw.flatten(1) - raw.flatten(1).min(1, keepdim=True).values
    assert torch.allclose(flat / (1e-7 + flat.max(1, keepdim=True).values), norm.flatten(1), atol=1e-6)


def test_streamed_record_equals_one_batch_record(digits):
    model = _trained_model(digits)
    x, y = digits[1].tensors
    one = next(probe_batches(model, model.features, x, y, batch_size=1000))
    many = list(probe_batches(model, model.features, x, y, batch_size=7))
    assert len(many) == 29
    for field in ("activations", "cams", "confidences"):
        assert torch.allclose(getattr(one, field), torch.cat([getattr(b, field) for b in many]), atol=1e-6)
