"""Model coverage: torchvision ResNet and a VisionTransformer through reshape_transform."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer, resnet18

from lightning_i2x import I2XCallback
from lightning_i2x.saliency import library_cam

from .conftest import trainer_kwargs


class Wrapped(pl.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def validation_step(self, batch, _i):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def _tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(N, 1 + h*w, C) ViT tokens without the class token, as an (N, C, h, w) map."""
    n, length, c = tokens.shape
    side = int((length - 1) ** 0.5)
    return tokens[:, 1:, :].reshape(n, side, side, c).permute(0, 3, 1, 2)


def _validate(tmp_path, net, cb, x, y):
    trainer = pl.Trainer(**trainer_kwargs(tmp_path))
    trainer.callbacks.append(cb)
    trainer.validate(Wrapped(net), DataLoader(TensorDataset(x, y), batch_size=16), verbose=False)
    return cb.run


def test_resnet_default_target_layer_skips_the_global_pool(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(24, 3, 64, 64), torch.arange(24) % 10
    net = resnet18(num_classes=10)
    run = _validate(tmp_path, net, I2XCallback((x, y), num_prototypes=8), x, y)
    assert run.config.target_layer == "net.layer4" and run.feature_shape == (2, 2)
    assert run.num_checkpoints == 1
    # the default layer's maps are pytorch-grad-cam's there; both rescaled to a peak of 1 first: on
    # random-init weights the raw maps are tiny and the 1e-7 of the min-max normalisation shows
    theirs = _library_maps(net.eval(), net.layer4, x, y, None, (2, 2))
    np.testing.assert_allclose(_peak_one(run.cams()[0].astype(np.float64)), _peak_one(theirs), atol=2e-3)  # float16 storage


def _peak_one(maps):
    peak = maps.reshape(maps.shape[0], -1).max(1)[:, None, None]
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0.0)


def test_vision_transformer_with_reshape_transform(tmp_path):
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero: no gradient at all
    x, y = torch.randn(24, 3, 32, 32), torch.arange(24) % 10
    cb = I2XCallback((x, y), target_layer="net.encoder.layers.encoder_layer_1.ln_1", reshape_transform=_tokens_to_grid, num_prototypes=8)
    run = _validate(tmp_path, vit, cb, x, y)
    assert run.feature_shape == (4, 4) and run.cams().max() > 0.5
    layer = vit.get_submodule("encoder.layers.encoder_layer_1.ln_1")
    theirs = library_cam(vit.eval(), layer, x, y, method="gradcam", reshape_transform=_tokens_to_grid).cams.numpy()
    np.testing.assert_allclose(run.cams()[0], theirs, atol=2e-3)  # float16 storage
    expl = run.explain()
    assert expl.presence.shape == (24, 8)


def test_forward_fn_adapts_a_forward_with_extra_arguments(tmp_path):
    class NeedsTemperature(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x, temperature):
            return self.fc(torch.relu(self.features(x)).mean((2, 3))) / temperature

    class Module(Wrapped):
        def forward(self, x):
            return self.net(x, temperature=2.0)

    torch.manual_seed(0)
    x, y = torch.randn(12, 3, 8, 8), torch.arange(12) % 10
    model = Module(NeedsTemperature())
    cb = I2XCallback((x, y), target_layer="net.features", num_prototypes=4, forward_fn=lambda m, images: m.net(images, temperature=2.0))
    trainer = pl.Trainer(**trainer_kwargs(tmp_path))
    trainer.callbacks.append(cb)
    trainer.validate(model, DataLoader(TensorDataset(x, y), batch_size=6), verbose=False)
    with torch.no_grad():
        np.testing.assert_allclose(cb.run.confidences()[0], torch.softmax(model(x), 1).numpy(), atol=1e-6)


# -- transformers without hand work -----------------------------------------------------------------

import pytest  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from torchvision.models import SwinTransformer  # noqa: E402

from lightning_i2x.saliency import (  # noqa: E402
    TokensToMap,
    infer_reshape_transform,
    native_gradcam,  # noqa: E402
    resolve_target_layer,
)


def _doc_vit_reshape(tensor, height=4, width=4):
    """pytorch-grad-cam's documented ViT reshape_transform (tutorials/vision_transformers.md)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def _doc_swin_reshape(tensor):
    """The documented Swin reshape's transposes; torchvision's Swin is already (N, H, W, C)."""
    return tensor.transpose(2, 3).transpose(1, 2)


def _small_vit():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero: no gradient at all
    return vit.eval()


def _small_swin():
    torch.manual_seed(0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[2, 2], num_classes=10)
    # a unit-scale head: with torchvision's 0.02-scale init the raw maps are ~1e-4, where the 1e-7
    # in pytorch-grad-cam's two normalisations (ours: one) shows as a 1e-4 relative difference
    torch.nn.init.normal_(swin.head.weight)
    return swin.eval()


def _library_maps(model, layer, x, y, reshape, hw):
    cam = GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
    cam.get_target_width_height = lambda _x: hw
    try:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in y])
    finally:
        cam.activations_and_grads.release()


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_transformer_target_layer_and_reshape_are_inferred(family):
    net = _small_vit() if family == "vit" else _small_swin()
    model = Wrapped(net).eval()
    x, y = torch.randn(12, 3, 32, 32), torch.arange(12) % 10
    layer = resolve_target_layer(model, None, x[:2], forward_fn=lambda m, i: m(i))
    if family == "vit":
        assert layer.name == "net.encoder.layers.encoder_layer_1.ln_1"
        assert layer.reshape_transform == TokensToMap(4, 4, prefix_tokens=1) and layer.feature_shape == (32, 4, 4)
        doc = _doc_vit_reshape
    else:
        assert layer.name == "net.features.3.0.norm1"  # the last stage's last block's norm1
        assert layer.reshape_transform == TokensToMap(4, 4, channels_last=True) and layer.feature_shape == (32, 4, 4)
        doc = _doc_swin_reshape
    ours = native_gradcam(model, layer.module, x, y, reshape_transform=layer.reshape_transform).cams.numpy()
    theirs = _library_maps(model, layer.module, x, y, doc, (4, 4))
    assert ours.shape == theirs.shape == (12, 4, 4) and ours.max() > 0.5
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_named_transformer_layer_gets_the_reshape_and_a_users_own_wins():
    model = Wrapped(_small_vit())
    x = torch.randn(2, 3, 32, 32)
    named = resolve_target_layer(model, "net.encoder.layers.encoder_layer_0.ln_1", x, forward_fn=lambda m, i: m(i))
    assert named.reshape_transform == TokensToMap(4, 4, prefix_tokens=1)
    own = resolve_target_layer(model, None, x, forward_fn=lambda m, i: m(i), reshape_transform=_doc_vit_reshape)
    assert own.name == "net.encoder.layers.encoder_layer_1.ln_1" and own.reshape_transform is _doc_vit_reshape
    cnn = resnet18(num_classes=10)
    assert resolve_target_layer(cnn, None, torch.randn(2, 3, 64, 64), forward_fn=lambda m, i: m(i)).reshape_transform is None
    assert infer_reshape_transform(cnn, "layer4", torch.zeros(2, 512, 2, 2)) is None
    with pytest.raises(ValueError, match="size the reshape was inferred at"):
        TokensToMap(4, 4, prefix_tokens=1)(torch.zeros(2, 26, 8))


def test_timm_vit_is_recognised():
    import timm  # a dev dependency: a broken install fails here, it does not skip
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6)
    layer = resolve_target_layer(vit, None, x[:2], forward_fn=lambda m, i: m(i))
    assert layer.name == "blocks.1.norm1" and layer.reshape_transform == TokensToMap(4, 4, prefix_tokens=vit.num_prefix_tokens)
    ours = native_gradcam(vit, layer.module, x, y, reshape_transform=layer.reshape_transform).cams.numpy()
    theirs = _library_maps(vit, layer.module, x, y, _doc_vit_reshape, (4, 4))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
