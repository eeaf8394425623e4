"""The probe pass: native GradCAM equals pytorch-grad-cam's, and leaves no trace on the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from lightning_i2x.saliency import CAM_METHODS, library_cam, native_gradcam, probe_batches

from .conftest import TinyCNN, trained_tiny_cnn

_TRAINED: dict = {}


def _trained_model(digits, steps=60):
    """A briefly trained TinyCNN (trained once per session, a fresh copy per call)."""
    if "state" in _TRAINED:
        model = TinyCNN()
        model.load_state_dict(_TRAINED["state"])
        return model.eval()
    model = trained_tiny_cnn(digits, steps)
    _TRAINED["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    return model


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


# -- the autograd graph starts at the target layer ------------------------------------------------


def _full_graph_gradcam(model, layer, x, y):
    """The previous implementation: the input requires grad, so the whole network is recorded."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            logits = model(x.clone().requires_grad_(True)).float()
            (grad,) = torch.autograd.grad(logits.gather(1, y.view(-1, 1)).sum(), captured[-1])
    finally:
        handle.remove()
    acts, grad = captured[-1].detach().float(), grad.float()
    from lightning_i2x.saliency import normalise_maps

    return normalise_maps(torch.relu((grad.mean(dim=(2, 3))[:, :, None, None] * acts).sum(dim=1)))


def _saved_bytes(fn):
    """Bytes of the tensors autograd saves for the backward while ``fn`` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_graph_starts_at_the_target_layer(digits):
    model = _trained_model(digits)
    x, y = digits[1].tensors
    seen = {}
    hooks = [
        model.features[0].register_forward_hook(lambda _m, _i, out: seen.update(before=(torch.is_grad_enabled(), out.requires_grad))),
        model.head[3].register_forward_hook(lambda _m, _i, out: seen.update(after=(torch.is_grad_enabled(), out.requires_grad))),
    ]
    try:
        ours = _saved_bytes(lambda: native_gradcam(model, model.features, x, y))
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"before": (False, False), "after": (True, True)}
    with torch.no_grad():
        feats = model.features(x)
    head_only = _saved_bytes(lambda: model.head(feats.clone().requires_grad_(True)).gather(1, y.view(-1, 1)).sum())
    whole = _saved_bytes(lambda: _full_graph_gradcam(model, model.features, x, y))
    assert ours == head_only < whole / 10  # the head's graph only: the convolutions save nothing


class _InplaceAfterLayer(torch.nn.Module):
    """A conv target layer followed by an in-place ReLU (as in many backbones)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("variant", ["frozen", "bfloat16", "inplace_after_layer", "compiled"])
def test_maps_equal_the_full_graph_maps(digits, variant):
    x, y = digits[1].tensors
    x, y = x[:64], y[:64]
    if variant == "inplace_after_layer":
        torch.manual_seed(0)
        model = _InplaceAfterLayer().eval()
    else:
        model = _trained_model(digits)
    if variant == "frozen":
        model.requires_grad_(False)  # a frozen backbone: no parameter requires grad at all
    if variant == "bfloat16":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    ref = _full_graph_gradcam(model, model.features, x, y)
    runner = torch.compile(model) if variant == "compiled" else model
    ours = torch.cat([b.cams for b in probe_batches(runner, model.features, x, y, batch_size=32)])
    assert torch.isfinite(ours).all() and ours.max() > 0.5
    assert torch.allclose(ours, ref, atol=1e-6), (ours - ref).abs().max()
    if variant == "frozen":
        assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("outer", ["enabled", "no_grad", "inference_mode"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_grad_mode_comes_back_exactly(digits, outer, method):
    model = _trained_model(digits)
    x, y = digits[1].tensors
    contexts = {"enabled": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    with contexts[outer]():
        before = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        list(probe_batches(model, model.features, x[:32], y[:32], cam=method))
        assert (torch.is_grad_enabled(), torch.is_inference_mode_enabled()) == before

        def boom(_m, _i, _out):
            raise RuntimeError("boom after the target layer")

        handle = model.head.register_forward_hook(boom)  # fails after the layer switched recording on
        try:
            with pytest.raises(RuntimeError, match="boom"):
                native_gradcam(model, model.features, x[:8], y[:8])
        finally:
            handle.remove()
        assert (torch.is_grad_enabled(), torch.is_inference_mode_enabled()) == before


def test_library_methods_record_from_the_layer_or_not_at_all(digits):
    model = _trained_model(digits)
    x, y = digits[1].tensors
    whole = _saved_bytes(lambda: library_cam(model, model.features, x, y, method="fullgrad"))
    for method in ("gradcam", "gradcam++", "eigencam"):
        assert _saved_bytes(lambda: library_cam(model, model.features, x, y, method=method)) < whole / 10, method


def test_clear_error_when_the_scores_do_not_depend_on_the_layer(digits):
    model = _trained_model(digits)
    x, y = digits[1].tensors

    def detached_forward(m, images):
        return m.head(m.features(images).detach())

    with pytest.raises(RuntimeError, match="do not depend on the target layer"):
        native_gradcam(model, model.features, x[:8], y[:8], forward_fn=detached_forward)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_pass_and_stream_never_synchronise_on_cuda(digits):
    from lightning_i2x.prototypes import PrototypeStream

    model = _trained_model(digits).cuda()
    x, y = (t.cuda() for t in digits[1].tensors)
    stream = PrototypeStream(4, n_components=8, min_fit_locations=64)
    kept = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in probe_batches(model, model.features, x, y, batch_size=32):
            stream.add(batch.activations)
            kept.append((batch.cams, batch.confidences))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _, assignment, distances = stream.fit()
    assert assignment.shape == distances.shape == (200 * 16,)
