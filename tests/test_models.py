"""Model coverage: torchvision ResNet and a VisionTransformer through reshape_transform."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer, resnet18

from lightning_i2x import I2XCallback
from lightning_i2x.cam import library_cam

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
    run = _validate(tmp_path, resnet18(num_classes=10), I2XCallback((x, y), num_prototypes=8), x, y)
    assert run.config.target_layer == "net.layer4" and run.feature_shape == (2, 2)
    assert run.num_checkpoints == 1 and np.isfinite(run.cams()).all()


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
