"""The mask repair's counterexamples remove what they claim to hide: on a planted uniform swatch
whose shade is the class, the resampling and mean fills (the reliance measure's interventions, one
implementation) leave no trace of the image's own shade, where the blur leaves it in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_i2x.finetune import MaskedDataset, PrototypeTarget, Selection
from lightning_i2x.finetune._data import curate, donor_map, mean_image
from lightning_i2x.options import FinetuneOptions
from lightning_i2x.perturb import apply_mask, fill_values, perturb, pixel_mask, resample_donors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, SIZE, MAP, CLASSES = 60, 16, 4, 10
SHADES = np.linspace(-1.0, 1.0, CLASSES)


def swatch_data():
    """16x16 images, noise plus an 8x8 uniform corner swatch (locations [0:2, 0:2] of a 4x4 map)
    whose shade is the class's; every sample flagged on the swatch."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % CLASSES
    x = 0.1 * torch.randn(N, 1, SIZE, SIZE, generator=g)
    x[:, 0, :8, :8] = torch.as_tensor(SHADES, dtype=torch.float32)[y].view(N, 1, 1)
    region = np.zeros((MAP, MAP), bool)
    region[:2, :2] = True
    return TensorDataset(x, y), region


def shade_read(images: list[torch.Tensor]) -> np.ndarray:
    """The class a reader of the swatch's inner 4x4 pixels would say (the nearest shade)."""
    inner = np.array([float(im[0, 2:6, 2:6].mean()) for im in images])
    return np.abs(inner[:, None] - SHADES[None]).argmin(axis=1)


def masked_images(fill: str):
    ds, region = swatch_data()
    idx, y = np.arange(N), ds.tensors[1].numpy()
    regions = {i: region for i in range(N)}
    donors = donor_map(idx, y, seed=3) if fill == "resample" else None
    reference = mean_image(ds, idx) if fill == "mean" else None
    masked = MaskedDataset(ds, regions, fill, seed=1, donors=donors, reference=reference)
    return ds, region, donors, [masked[i][0] for i in range(N)]


def test_the_swatch_planted_as_the_class_is_read_back():
    ds, _ = swatch_data()
    assert (shade_read(list(ds.tensors[0])) == ds.tensors[1].numpy()).all()


def test_blur_keeps_the_shade_content_removing_fills_do_not():
    ds, region, _, blurred = masked_images("blur")
    y = ds.tensors[1].numpy()
    assert (shade_read(blurred) == y).all()  # a blurred uniform swatch still says its class
    _, _, donors, resampled = masked_images("resample")
    read = shade_read(resampled)
    assert (read != y).all()  # the own shade is gone from every image
    assert (read == y[[donors[i] for i in range(N)]]).all()  # in its place another class's swatch
    _, _, _, meaned = masked_images("mean")
    inner = np.array([float(im[0, 2:6, 2:6].mean()) for im in meaned])
    assert np.ptp(inner) < 1e-6  # one value for every image: the swatch tells no class apart
    assert (shade_read(meaned) == y).mean() <= 1 / CLASSES + 1e-9
    # outside the region every pixel is the original one, bitwise
    outside = ~torch.from_numpy(pixel_mask(region, (SIZE, SIZE)))
    for im, orig in zip(resampled + meaned, list(ds.tensors[0]) * 2):
        assert torch.equal(im[0][outside], orig[0][outside])


def test_one_implementation_with_the_reliance_fills():
    ds, region, donors, resampled = masked_images("resample")
    x, y = ds.tensors
    big = torch.from_numpy(pixel_mask(region, (SIZE, SIZE)))[None].expand(N, SIZE, SIZE)
    d = resample_donors(y.numpy(), seed=3)
    assert [donors[i] for i in range(N)] == d.tolist()  # the reliance measure's donor choice
    batch = apply_mask(x, big, fill_values(x, "resample", donors=d))
    assert torch.equal(torch.stack(resampled), batch)
    _, _, _, meaned = masked_images("mean")
    torch.testing.assert_close(torch.stack(meaned), apply_mask(x, big, fill_values(x, "mean")), atol=1e-6, rtol=0)
    # the one-image blur and noise are the batch fills of a batch of one
    sigma = 2.0
    want = apply_mask(x[:1].double(), big[:1], fill_values(x[:1].double(), "blur", sigma=sigma)).float()[0]
    assert torch.equal(perturb(x[0], big[0].numpy(), "blur", sigma=sigma), want)
    gen = torch.Generator().manual_seed(7)
    want = apply_mask(x[:1].double(), big[:1], fill_values(x[:1].double(), "noise", generator=gen)).float()[0]
    assert torch.equal(perturb(x[0], big[0].numpy(), "noise", seed=7), want)


def test_the_fit_path_builds_the_same_counterexamples():
    ds, region, donors, resampled = masked_images("resample")
    y = ds.tensors[1].numpy()
    sel = Selection(targets=[PrototypeTarget((0,))], indices=np.arange(N), labels=y, flags=np.ones((1, N), bool),
                    regions=np.broadcast_to(region, (N, MAP, MAP)).copy())
    cur = curate(ds, sel, FinetuneOptions(prototypes=[0], mode="mask", mask_region="all", mask_fill="resample", seed=3))
    assert isinstance(cur.dataset, MaskedDataset) and cur.dataset.fill == "resample"
    assert all(torch.equal(cur[i][0], resampled[i]) for i in range(N))
    cur = curate(ds, sel, FinetuneOptions(prototypes=[0], mode="mask", mask_region="all", mask_fill="mean"))
    assert np.ptp([float(cur[i][0][0, 2:6, 2:6].mean()) for i in range(N)]) < 1e-6


def test_content_removing_fills_need_their_other_images():
    ds, region = swatch_data()
    with pytest.raises(ValueError, match="donors= lacks 1 flagged"):
        MaskedDataset(ds, {0: region, 1: region}, "resample", donors={0: 1})
    with pytest.raises(ValueError, match="reference="):
        MaskedDataset(ds, {0: region}, "mean")
    with pytest.raises(ValueError, match="mask_fill must be one of"):
        MaskedDataset(ds, {0: region}, "zeros")
    with pytest.raises(ValueError, match="FinetuneOptions.mask_fill"):
        FinetuneOptions(mode="mask", mask_fill="zeros")
