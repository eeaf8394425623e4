"""The record pipeline's pieces that used to live in the callback, tested without a Trainer: the
checks a fit must pass at setup, the DDP gather, and two fixes of the 0.3 layout (pinned view
classes reach SAG; the end-of-fit measures see the last record's float32 maps)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_i2x import I2XCallback, SAGMeasure, ViewOptions
from lightning_i2x.options import FinetuneOptions
from lightning_i2x.record import ProbeEvidence, check_fit, check_writable, gather_evidence, probe_share
from lightning_i2x.saliency import TargetLayer

from .conftest import TinyCNN, trainer_kwargs

LAYER = TargetLayer("features", nn.Identity(), (16, 4, 4), 10)


def test_check_fit_returns_the_names_and_names_each_misfit():
    labels = torch.arange(20) % 10
    assert check_fit(labels, LAYER, num_prototypes=8, class_names=None) == [str(c) for c in range(10)]
    assert check_fit(labels, LAYER, num_prototypes=8, class_names=[f"d{c}" for c in range(10)])[3] == "d3"
    cases = [
        (dict(labels=torch.tensor([0, 10])), r"probe labels \[10\] lie outside the model's 10 classes"),
        (dict(num_prototypes=20 * 16 + 1), r"num_prototypes=321 exceeds the 320 probe feature vectors"),
        (dict(class_names=["a", "b"]), "2 class names for a model with 10 classes"),
        (dict(views=ViewOptions(classes=["seven"])), r"ViewOptions.classes \['seven'\] are not classes of this model"),
        (dict(cam="gradcam++", world_size=2), "cam='gradcam\\+\\+' cannot run in 2 processes"),
        (dict(finetune=FinetuneOptions(), world_size=2), "auto_finetune runs at the end of fit in one process"),
        (dict(finetune=FinetuneOptions(pairs=[(1, 12)])), "unknown classes 12"),
    ]
    for change, message in cases:
        kw = dict(labels=labels, num_prototypes=8, class_names=None)
        kw.update(change)
        with pytest.raises(ValueError, match=message):
            check_fit(kw.pop("labels"), LAYER, **kw)
    # what runs under DDP is the method's capability, not a name
    assert check_fit(labels, LAYER, num_prototypes=8, class_names=None, cam="gradcam", world_size=4)


def test_check_writable_names_a_path_it_cannot_write(tmp_path):
    assert check_writable(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot be written"):
        check_writable(tmp_path / "file" / "run")


def _fake_ddp(world: int, n: int, failing: set[int] = frozenset()):
    """Each rank's gather_evidence against an all_gather that hands every rank what all ranks sent
    (a two-pass emulation of the collective: the first pass records what each rank sends)."""
    torch.manual_seed(0)
    whole = ProbeEvidence(torch.randn(n, 3, 2, 2), torch.rand(n, 2, 2), torch.rand(n, 5))
    sent: dict[int, list[torch.Tensor]] = {}
    for phase in ("send", "receive"):
        out = {}
        for rank in range(world):
            part = probe_share(rank, world, n)
            local = None if rank in failing else ProbeEvidence(whole.activations[part], whole.cams[part], whole.confidences[part])
            calls: list[torch.Tensor] = []

            def all_gather(t, rank=rank, calls=calls):
                calls.append(t)
                if phase == "send":
                    sent.setdefault(rank, []).append(t)
                    return torch.stack([t] * world)
                return torch.stack([sent[r][len(calls) - 1] for r in range(world)])

            out[rank] = gather_evidence(all_gather, local, rank=rank, world=world, num_probe=n, feature_shape=(3, 2, 2), num_classes=5,
                                        device="cpu")
    return whole, out


@pytest.mark.parametrize("world, n", [(2, 10), (3, 10), (4, 3)])
def test_gather_evidence_restores_probe_order_whatever_the_split(world, n):
    whole, out = _fake_ddp(world, n)
    for rank in range(world):
        evidence, failed = out[rank]
        assert failed == []
        assert torch.equal(evidence.activations, whole.activations) and torch.equal(evidence.cams, whole.cams)
        assert torch.equal(evidence.confidences, whole.confidences)
    assert [probe_share(r, 4, 3) for r in range(4)] == [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 3)]


def test_gather_evidence_names_the_failed_ranks_and_gives_no_evidence():
    _, out = _fake_ddp(3, 9, failing={1})
    assert all(out[r] == (None, [1]) for r in range(3))


def test_pinned_view_classes_reach_sag(tmp_path, digits):
    """SAGMeasure(classes=None) measures the classes the views draw: the callback's own
    ViewOptions, so classes a user pins there are the ones SAG measures (0.2 used the defaults)."""
    probe = digits[1]
    cb = I2XCallback(probe, num_prototypes=8, views=ViewOptions(classes=["d3", 5], figures=False), measures=[SAGMeasure()])
    assert cb.measures[0].views == cb.views
    kept = SAGMeasure(views=ViewOptions(classes=[1]))
    assert I2XCallback(probe, measures=[kept]).measures[0] is kept  # a measure's own views are kept
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=3, callbacks=[cb], logger=False))
    trainer.fit(TinyCNN(lr=0.1), DataLoader(digits[0], batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    chosen = cb.measures[0].select_images(cb.run, cb.explanation)
    assert set(chosen) <= {3, 5} and chosen, chosen
    assert {s["class"] for s in cb.run.attachment("sag")[0]["sags"]} == set(chosen)


class _Spy:
    """An end-of-fit measure that keeps what it was handed."""

    name, when = "spy", "end"

    def __init__(self):
        self.seen = None

    def __call__(self, model, run, evidence, explanation, *, forward_fn=None):
        self.seen = evidence


def test_end_of_fit_measures_get_the_last_records_float32_maps(tmp_path, digits):
    train, probe = digits
    spy = _Spy()
    cb = I2XCallback(probe, num_prototypes=8, views=False, measures=[spy])
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[cb], logger=False))
    trainer.fit(TinyCNN(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(probe, batch_size=100))
    cams = spy.seen.cams
    stored = torch.from_numpy(cb.run.cams()[-1].astype("float32"))
    assert cams.dtype == torch.float32 and cams.shape == stored.shape
    assert torch.allclose(cams, stored, atol=1e-3)  # the same record ...
    assert not torch.equal(cams, stored)  # ... at full precision, not the store's float16 copy
    assert spy.seen.images is not None and torch.equal(spy.seen.labels, probe.tensors[1])


def test_the_0_2_module_paths_still_import_for_one_release_with_a_warning():
    import importlib
    import sys

    import lightning_i2x.saliency
    import lightning_i2x.viz

    for old, new in (("cam", lightning_i2x.saliency), ("plots", lightning_i2x.viz)):
        sys.modules.pop(f"lightning_i2x.{old}", None)
        with pytest.warns(FutureWarning, match=rf"lightning_i2x.{old} moved in 0.3 .* import from {new.__name__}"):
            module = importlib.import_module(f"lightning_i2x.{old}")
        assert module is new and new.__spec__.name == new.__name__
    with pytest.warns(FutureWarning, match="lightning_i2x.layers moved"):
        from lightning_i2x.layers import resolve_target_layer
    assert resolve_target_layer is lightning_i2x.saliency.resolve_target_layer
