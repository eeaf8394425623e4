"""PerturbationFinetuner (Step 7) on a small real run: the curated set, the masks and the result
numbers, each checked against a brute-force computation that shares no code with the package."""

from __future__ import annotations

import copy
import inspect
import json
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_i2x import ExplainOptions, FinetuneOptions, I2XCallback, I2XRun, PerturbationFinetuner
from lightning_i2x.analysis import resolve_pairs
from lightning_i2x.analysis import salient_mask as salient_locations
from lightning_i2x.finetune import FinetuneResult, MaskedDataset, PairTarget, PrototypeTarget, flag_samples, target_from_dict
from lightning_i2x.perturb import perturb, pixel_mask

from .conftest import TinyCNN, trainer_kwargs

EXPLAIN = ExplainOptions(min_flips=1, uncertain_rule="difference", significance="tau")  # a 4-checkpoint run on digits: one flip
# makes a prototype uncertain (0.2's rule: a run this short rarely reverses an edge between two classes)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits):
    """A 4-epoch TinyCNN run on real digits, its final weights and its top uncertain pair."""
    root = tmp_path_factory.mktemp("ft")
    pl.seed_everything(0, verbose=False)
    model = TinyCNN(lr=0.05)
    cb = I2XCallback(digits[1], num_prototypes=8, run_dir=root / "run", explain=EXPLAIN, views=False)
    trainer = pl.Trainer(**trainer_kwargs(root, max_epochs=4, callbacks=[cb], logger=False, deterministic=True))
    trainer.fit(model, DataLoader(digits[0], batch_size=64, shuffle=True), DataLoader(digits[1], batch_size=100))
    run = I2XRun.load(cb.run.path)
    expl = run.explain(EXPLAIN)
    assert expl.uncertain, "the fixture run needs an uncertain prototype"
    pair = expl.uncertain[0].classes
    protos = [u.prototype for u in expl.uncertain if u.classes == pair]
    return SimpleNamespace(path=run.path, run=run, state=copy.deepcopy(model.state_dict()), pair=pair, protos=protos, root=root)


def _model(digits_run) -> TinyCNN:
    model = TinyCNN(lr=0.05)
    model.load_state_dict(digits_run.state)
    return model


def brute_force(model: nn.Module, run: I2XRun, images: torch.Tensor, labels: torch.Tensor, pair, protos, threshold=0.5):
    """In float64, with no FAISS and no package code: GradCAM of the true class at ``features`` by
    autograd (eval mode, so samples are independent and one batch is the same as one sample at a
    time), min-max normalised per map; every location's feature vector projected with the run's
    PCA and given the nearest centroid by plain numpy. Returns flagged (N,) bool, regions (N, h, w)
    bool (salient locations of flagged samples assigned to the pair's prototypes) and the
    borderline samples (a saliency within 1e-6 of the threshold or a near tie of centroids), where
    float32 and float64 may legitimately disagree."""
    m64 = copy.deepcopy(model).double().eval()
    p = run.prototypes
    proj, bias, cent = p.projection.astype(np.float64), p.bias.astype(np.float64), p.centroids.astype(np.float64)
    acts = m64.features(images.double())
    acts.retain_grad()
    m64.head(acts).gather(1, labels.view(-1, 1)).sum().backward()
    a, g = acts.detach().numpy(), acts.grad.numpy()  # (N, d, h, w)
    n, d, h, w = a.shape
    cam = np.maximum((g.mean(axis=(2, 3))[:, :, None, None] * a).sum(axis=1), 0).reshape(n, -1)
    lo = cam.min(axis=1, keepdims=True)
    s = (cam - lo) / (1e-7 + (cam - lo).max(axis=1, keepdims=True))
    feats = a.transpose(0, 2, 3, 1).reshape(-1, d) @ proj.T + bias  # (N*L, p)
    dist = ((feats[:, None, :] - cent[None]) ** 2).sum(-1)
    assign = dist.argmin(1).reshape(n, -1)
    part = np.sort(dist, axis=1)
    tie = (part[:, 1] - part[:, 0] < 1e-6 * part[:, 1]).reshape(n, -1)
    hit = (s >= threshold) & np.isin(assign, protos)
    flagged = np.isin(labels.numpy(), pair) & hit.any(axis=1)
    regions = (hit & flagged[:, None]).reshape(n, h, w)
    borderline = (np.abs(s - threshold) < 1e-6).any(axis=1) | tie.any(axis=1)
    return flagged, regions, borderline


@pytest.fixture(scope="module")
def selection(digits_run, digits):
    model = _model(digits_run)
    ft = PerturbationFinetuner(digits_run.path, FinetuneOptions(explain=EXPLAIN), progress=False)
    sel = ft.select(model, DataLoader(digits[0], batch_size=64, shuffle=True))
    x, y = digits[0].tensors
    bf = brute_force(model, digits_run.run, x, y, digits_run.pair, digits_run.protos)
    return ft, sel, bf


# -- the curated set ---------------------------------------------------------------------------------
def test_curated_set_is_the_brute_force_set(selection, digits_run, digits):
    ft, sel, (flagged, _, borderline) = selection
    assert sel.targets == [PairTarget(digits_run.pair, digits_run.protos)]
    assert list(sel.indices) == list(range(len(digits[0])))  # searched in dataset order despite the shuffling loader
    assert 0 < flagged.sum() < len(flagged)
    differ = np.flatnonzero(sel.flagged != flagged)
    assert borderline[differ].all(), f"samples {differ[~borderline[differ]]} disagree with the brute force"
    assert differ.size <= 1
    curated = ft.curated_dataset(digits[0], sel)
    assert curated.dataset is digits[0]
    assert sorted(curated.indices) == sorted(np.flatnonzero(~sel.flagged).tolist())
    assert set(curated.indices).isdisjoint(np.flatnonzero(flagged & ~borderline))
    # only samples of the two classes are ever removed
    assert set(np.unique(digits[0].tensors[1].numpy()[sel.flagged])) <= set(digits_run.pair)
    assert sel.counts() == {PairTarget(digits_run.pair, digits_run.protos): int(sel.flagged.sum())}


def test_max_samples_searches_a_seeded_subset(digits_run, digits):
    options = FinetuneOptions(explain=EXPLAIN, max_samples=300, seed=3)
    ft = PerturbationFinetuner(digits_run.path, options, progress=False)
    sel = ft.select(_model(digits_run), DataLoader(digits[0], batch_size=128))
    again = PerturbationFinetuner(digits_run.path, options, progress=False)
    assert len(sel.indices) == 300 and len(set(sel.indices)) == 300
    np.testing.assert_array_equal(sel.indices, again.select(_model(digits_run), DataLoader(digits[0], batch_size=7)).indices)


def test_prototypes_per_pair_keeps_the_best_ranked(digits_run):
    ft = PerturbationFinetuner(digits_run.path, FinetuneOptions(pairs=[digits_run.pair], explain=EXPLAIN, prototypes_per_pair=1))
    assert ft.targets() == [PairTarget(digits_run.pair, digits_run.protos[:1])]
    assert PerturbationFinetuner(digits_run.path, FinetuneOptions(pairs=[digits_run.pair], explain=EXPLAIN)).targets() == [
        PairTarget(digits_run.pair, digits_run.protos)]


# -- the masks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fill", ["blur", "noise", "baseline"])
def test_mask_changes_exactly_the_flagged_regions(selection, digits_run, digits, fill):
    ft, sel, (flagged, regions, borderline) = selection
    ok = ~borderline
    masked = MaskedDataset(digits[0], {int(i): r for i, r, f in zip(sel.indices, sel.regions, sel.flagged) if f}, fill, seed=5)
    x, y = digits[0].tensors
    block = 8 // regions.shape[1]  # 8x8 images, 4x4 feature maps: each location covers a 2x2 block
    changed_any = 0
    for i in range(len(digits[0])):
        new, label = masked[i]
        assert int(label) == int(y[i])
        expect = np.kron(regions[i], np.ones((block, block), dtype=bool)) if ok[i] else pixel_mask(sel.regions[i], (8, 8))
        diff = (new != x[i]).numpy()[0]
        assert not diff[~expect].any(), f"sample {i}: pixels outside the flagged regions changed"
        if fill == "baseline":
            np.testing.assert_allclose(new[0][torch.from_numpy(expect)], x[i][0].mean().item(), rtol=0, atol=1e-6)
        if fill == "noise":
            assert diff[expect].all()
        changed_any += int(diff.any())
        if ok[i] and not flagged[i]:
            assert torch.equal(new, x[i])
    assert changed_any > 0
    # deterministic: the same image every time it is read
    i = int(np.flatnonzero(sel.flagged)[0])
    assert torch.equal(masked[i][0], masked[i][0])
    # the fit path builds the same dataset: every searched sample, the flagged ones perturbed
    mft = PerturbationFinetuner(digits_run.path, FinetuneOptions(mode="mask", mask_fill=fill, seed=5, explain=EXPLAIN), progress=False)
    cur = mft.curated_dataset(digits[0], sel)
    assert len(cur) == len(digits[0]) and torch.equal(cur[i][0], masked[i][0])


def test_pixel_mask_and_perturb_on_planted_input():
    regions = np.zeros((2, 3, 3), bool)
    regions[0, 1, 2] = True
    big = pixel_mask(regions, (6, 7))
    assert big.shape == (2, 6, 7)
    rows, cols = np.nonzero(big[0])
    assert set(rows) == {2, 3} and set(cols) == {5, 6} and not big[1].any()  # col x -> floor(3x/7)
    img = torch.arange(2 * 6 * 7, dtype=torch.float32).view(2, 6, 7)
    for fill in ("blur", "noise", "baseline"):
        out = perturb(img, big[0], fill, seed=1, baseline=-3.0)
        assert torch.equal(out[:, ~torch.from_numpy(big[0])], img[:, ~torch.from_numpy(big[0])])
        assert (out[:, torch.from_numpy(big[0])] != img[:, torch.from_numpy(big[0])]).all()
        assert torch.equal(out, perturb(img, big[0], fill, seed=1, baseline=-3.0))
    assert (perturb(img, big[0], "baseline", baseline=-3.0)[:, torch.from_numpy(big[0])] == -3.0).all()
    with pytest.raises(ValueError, match="fill must be one of"):
        perturb(img, big[0], "zeros")


def test_flag_samples_and_salient_locations_by_hand():
    s = salient_locations(np.array([[0.0, 1.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]]))
    np.testing.assert_array_equal(s, [[False, False, True, True], [False, False, False, False]])
    assignment = np.array([[0, 1, 2, 3], [2, 2, 2, 2], [0, 1, 2, 3]])
    salient = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
    labels = np.array([4, 5, 6])
    flags, regions = flag_samples(assignment, salient, labels, [PairTarget((4, 5), [2]), PairTarget((5, 6), [3])])
    np.testing.assert_array_equal(flags, [[True, True, False], [False, False, True]])
    np.testing.assert_array_equal(regions, [[0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]])
    _, all_regions = flag_samples(assignment, salient, labels, [PairTarget((4, 5), [2])], region="all")
    np.testing.assert_array_equal(all_regions[1], [1, 1, 1, 1])


# -- fit and its result ------------------------------------------------------------------------------
@pytest.mark.slow  # about 1 s on an idle 2-core CPU, 30 s on a busy one
def test_result_numbers_equal_the_saved_predictions(digits_run, digits, tmp_path):
    model = _model(digits_run)
    before = copy.deepcopy(model)
    ft = PerturbationFinetuner(digits_run.run, FinetuneOptions(pairs=[digits_run.pair], explain=EXPLAIN, out_dir=tmp_path / "ft",
                                                               lr=0.02, seed=1), progress=False)
    val = DataLoader(digits[1], batch_size=50)
    result = ft.fit(model, DataLoader(digits[0], batch_size=64, shuffle=True), val)
    assert isinstance(result, FinetuneResult) and not result.skipped
    saved = np.load(tmp_path / "ft" / "predictions.npz", allow_pickle=False)
    labels, p0, p1 = saved["labels"], saved["pred_before"], saved["pred_after"]
    assert result.accuracy_before == pytest.approx((p0 == labels).mean())
    assert result.accuracy_after == pytest.approx((p1 == labels).mean())
    a, b = digits_run.pair
    for preds, conf, cm in ((p0, result.confusions_before, result.confusion_matrix_before),
                            (p1, result.confusions_after, result.confusion_matrix_after)):
        assert conf == {(a, b): (int(((labels == a) & (preds == b)).sum()), int(((labels == b) & (preds == a)).sum()))}
        for t in range(10):
            for q in range(10):
                assert cm[t, q] == ((labels == t) & (preds == q)).sum()
    # the predictions are the models': the original before, the module fine-tuned in place after
    x, y = digits[1].tensors
    np.testing.assert_array_equal(labels, y.numpy())
    with torch.no_grad():
        np.testing.assert_array_equal(p0, before.eval()(x).argmax(1).numpy())
        np.testing.assert_array_equal(p1, model.eval()(x).argmax(1).numpy())
    assert any(not torch.equal(u, v) for u, v in zip(model.state_dict().values(), before.state_dict().values()))
    sel = np.load(tmp_path / "ft" / "selection.npz", allow_pickle=False)
    assert result.removed_or_masked == {(a, b): int(sel["flags"].sum())} and result.num_curated_samples == 1500 - sel["flags"].sum()
    d = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert d == json.loads(json.dumps(result.to_dict()))
    assert d["pairs"][0]["confusions_after"]["total"] == sum(result.confusions_after[(a, b)]) == result.targeted_confusions("after")
    # the same seed gives the same fine-tuning
    again = _model(digits_run)
    ft2 = PerturbationFinetuner(digits_run.run, FinetuneOptions(pairs=[digits_run.pair], explain=EXPLAIN, out_dir=tmp_path / "ft2",
                                                                lr=0.02, seed=1), progress=False)
    ft2.fit(again, DataLoader(digits[0], batch_size=64, shuffle=True), val)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


@pytest.mark.slow  # about 1 s on an idle 2-core CPU, 30 s on a busy one
def test_auto_finetune_writes_its_tensorboard_tags(tmp_path, digits):
    pl.seed_everything(0, verbose=False)
    cb = I2XCallback(digits[1], num_prototypes=8, explain=EXPLAIN, views=False,
                     auto_finetune=True, finetune=FinetuneOptions(schedule=("curated", "full"), seed=2))
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=3, callbacks=[cb]))
    model = TinyCNN(lr=0.05)
    trainer.fit(model, DataLoader(digits[0], batch_size=64, shuffle=True), DataLoader(digits[1], batch_size=100))
    result = cb.finetune_result
    assert result is not None and not result.skipped, result
    assert model.trainer is trainer  # the module stays attached to the outer trainer
    assert (cb.run.path / "finetune" / "result.json").exists() and (cb.run.path / "finetune" / "predictions.npz").exists()
    acc = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    names = cb.run.class_names
    (a, b), = result.pairs
    want = {"i2x/finetune/accuracy_before", "i2x/finetune/accuracy_after",
            f"i2x/finetune/confusions_before/{names[a]}_as_{names[b]}", f"i2x/finetune/confusions_after/{names[b]}_as_{names[a]}",
            f"i2x/finetune/confusions_after/{names[a]}_{names[b]}", f"i2x/finetune/removed_or_masked/{names[a]}_{names[b]}"}
    assert want <= scalars, want - scalars
    assert {"i2x/finetune/confusion_matrix_before", "i2x/finetune/confusion_matrix_after"} <= images
    assert acc.Scalars("i2x/finetune/accuracy_after")[-1].value == pytest.approx(result.accuracy_after)
    assert acc.Scalars(f"i2x/finetune/confusions_after/{names[a]}_{names[b]}")[-1].value == result.targeted_confusions("after")
    assert "i2x/finetune/summary/text_summary" in acc.Tags()["tensors"]


def test_target_layer_is_resolved_once_per_fit(digits_run, digits, tmp_path, monkeypatch):
    """The layer check (a forward and a backward) runs once per fit, though the search and the
    GradCAM penalty both use the layer; the result's typed targets come back from its JSON."""
    from lightning_i2x.finetune import _layer

    calls = []
    resolve = _layer.resolve_target_layer
    monkeypatch.setattr(_layer, "resolve_target_layer", lambda *a, **kw: calls.append(1) or resolve(*a, **kw))
    options = FinetuneOptions(pairs=[digits_run.pair], explain=EXPLAIN, mode="penalise", penalty="gradcam", schedule=("curated", "full"),
                              max_samples=200, out_dir=tmp_path / "ft")
    ft = PerturbationFinetuner(digits_run.run, options, progress=False)
    result = ft.fit(_model(digits_run), DataLoader(digits[0], batch_size=64, shuffle=True), DataLoader(digits[1], batch_size=100))
    assert not result.skipped and len(calls) == 1
    ft.select(_model(digits_run), DataLoader(digits[0], batch_size=64))
    assert len(calls) == 2
    d = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert [target_from_dict(t) for t in d["targets"]] == result.targets == [PairTarget(digits_run.pair, digits_run.protos)]


def test_targets_are_typed_and_round_trip_through_the_result():
    targets = [PairTarget((np.int64(2), 7), [np.int64(3), 1]), PrototypeTarget((4,))]
    assert targets[0].classes == (2, 7) and targets[0].prototypes == (3, 1) and hash(targets[0]) == hash(PairTarget((2, 7), (3, 1)))
    result = FinetuneResult(targets=targets, class_names=[f"d{c}" for c in range(10)], mode="remove", schedule=("curated",),
                            skipped_reason="planted")
    d = json.loads(json.dumps(result.to_dict()))
    assert d["targets"] == [{"classes": [2, 7], "prototypes": [3, 1]}, {"classes": None, "prototypes": [4]}]
    assert [target_from_dict(t) for t in d["targets"]] == targets
    assert result.pairs == [(2, 7)] and result.target_prototypes == [4]
    with pytest.raises(TypeError, match=r"a list of targets: \[PairTarget"):
        flag_samples(np.zeros((1, 2), int), np.ones((1, 2), bool), np.zeros(1, int), {(0, 1): [0]})


def test_the_constructor_takes_its_options_as_one_group(digits_run, tmp_path):
    params = inspect.signature(PerturbationFinetuner).parameters
    assert len(params) <= 8 and list(params)[:2] == ["run", "options"], list(params)
    with pytest.raises(TypeError, match=r"no longer takes pairs=, mode=.*options=FinetuneOptions\(pairs=\.\.\., mode=\.\.\.\)"):
        PerturbationFinetuner(digits_run.path, pairs=[(2, 7)], mode="mask")
    with pytest.raises(TypeError, match=r"options=FinetuneOptions\(explain=ExplainOptions\(saliency_threshold=\.\.\.\)\)"):
        PerturbationFinetuner(digits_run.path, saliency_threshold=0.4)
    with pytest.raises(TypeError, match=r"options must be a FinetuneOptions, got list.*options=FinetuneOptions\(pairs="):
        PerturbationFinetuner(digits_run.path, [(2, 7)])
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        PerturbationFinetuner(digits_run.path, epochs=2)
    options = FinetuneOptions(explain=EXPLAIN, out_dir=tmp_path / "ft")
    assert options.out_dir == str(tmp_path / "ft") and FinetuneOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    ft = PerturbationFinetuner(digits_run.path, options)
    assert ft.out_dir == tmp_path / "ft" and ft.explain == EXPLAIN
    assert PerturbationFinetuner(digits_run.path).out_dir == digits_run.path / "finetune"


# -- errors ------------------------------------------------------------------------------------------
def test_unknown_classes_are_named(digits_run):
    with pytest.raises(ValueError, match=r"unknown classes 'd11', 12; the run's classes are \['d0'"):
        PerturbationFinetuner(digits_run.path, FinetuneOptions(pairs=[("d1", "d11"), (3, 12)]))
    with pytest.raises(ValueError, match="same class twice"):
        PerturbationFinetuner(digits_run.path, FinetuneOptions(pairs=[("d1", 1)]))
    assert resolve_pairs([("d7", "d2"), (2, 7), ("d1", 3)], [f"d{c}" for c in range(10)]) == [(2, 7), (1, 3)]


class _Wider(TinyCNN):
    def __init__(self):
        super().__init__()
        self.features[3] = nn.Conv2d(8, 12, 3, padding=1)
        self.head[3] = nn.Linear(12, 10)


class _Renamed(TinyCNN):
    def __init__(self):
        super().__init__()
        self.body = self.features
        del self.features

    def forward(self, x):
        return self.head(self.body(x))


def test_a_model_with_another_target_layer_is_refused(digits_run, digits):
    loader, val = DataLoader(digits[0], batch_size=64), DataLoader(digits[1], batch_size=100)
    ft = PerturbationFinetuner(digits_run.path, FinetuneOptions(explain=EXPLAIN), progress=False)
    with pytest.raises(ValueError, match=r"gives feature maps \(12, 4, 4\).*fitted on \(16, 4, 4\)"):
        ft.fit(_Wider(), loader, val)
    with pytest.raises(ValueError, match=r"does not match the run's target layer 'features'.*not a module"):
        ft.fit(_Renamed(), loader, val)


class _Dicts(Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {"image": x, "label": y}


class _Stream(IterableDataset):
    def __init__(self, base):
        self.base = base

    def __iter__(self):
        return iter(self.base)


def test_training_samples_that_cannot_be_indexed(digits_run, digits):
    ft = PerturbationFinetuner(digits_run.path, FinetuneOptions(explain=EXPLAIN), progress=False)
    val = DataLoader(digits[1], batch_size=100)
    with pytest.raises(TypeError, match="yields a dict"):
        ft.fit(_model(digits_run), DataLoader(_Dicts(digits[0]), batch_size=64), val)
    with pytest.raises(TypeError, match="cannot be indexed.*IterableDataset"):
        ft.fit(_model(digits_run), DataLoader(_Stream(digits[0]), batch_size=64), val)
    with pytest.raises(TypeError, match=r"\(image, label\)"):
        ft.fit(_model(digits_run), DataLoader(TensorDataset(digits[0].tensors[0]), batch_size=64), val)
    with pytest.raises(TypeError, match="one torch DataLoader"):
        ft.fit(_model(digits_run), digits[0], val)


def test_no_uncertain_prototype_warns_and_does_nothing(digits_run, digits, tmp_path):
    model = _model(digits_run)
    ft = PerturbationFinetuner(digits_run.path, FinetuneOptions(explain=ExplainOptions(min_flips=99), out_dir=tmp_path / "none"),
                               progress=False)
    with pytest.warns(RuntimeWarning, match="no uncertain prototype.*nothing was fine-tuned"):
        result = ft.fit(model, DataLoader(digits[0], batch_size=64), DataLoader(digits[1], batch_size=100))
    assert result.skipped and "no uncertain prototype" in result.skipped_reason
    assert result.accuracy_after is None and result.pairs == [] and result.to_dict()["skipped_reason"] == result.skipped_reason
    for k, v in model.state_dict().items():
        assert torch.equal(v, digits_run.state[k]), k
    assert not (tmp_path / "none").exists()


def test_option_errors(digits_run):
    with pytest.raises(ValueError, match="mode must be one of"):
        PerturbationFinetuner(digits_run.path, FinetuneOptions(mode="drop"))
    with pytest.raises(ValueError, match="schedule must be"):
        PerturbationFinetuner(digits_run.path, FinetuneOptions(schedule=("curated", "mixed")))
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        FinetuneOptions(epochs=2)
    with pytest.raises(ValueError, match="FinetuneOptions.mask_fill must be one of"):
        I2XCallback(digits_run.run.labels, auto_finetune=True, finetune=FinetuneOptions(mask_fill="zeros"))
    with pytest.raises(ValueError, match="without auto_finetune=True"):
        I2XCallback(digits_run.run.labels, finetune=FinetuneOptions(mode="mask"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'finetune_kwargs'"):  # the 0.1 name is gone in 0.3
        I2XCallback(digits_run.run.labels, auto_finetune=True, finetune_kwargs={"mask_fill": "zeros"})


def test_auto_finetune_is_refused_under_several_processes(tmp_path, digits):
    cb = I2XCallback(digits[1], num_prototypes=8, auto_finetune=True, finetune=FinetuneOptions(pairs=[("d2", "d7")]))
    trainer = SimpleNamespace(world_size=2, strategy=None, is_global_zero=True, log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="auto_finetune runs at the end of fit in one process; this fit runs in 2"):
        cb.setup(trainer, TinyCNN(), "fit")
    bad = I2XCallback(digits[1], num_prototypes=8, auto_finetune=True, finetune=FinetuneOptions(pairs=[("d2", "seven")]))
    with pytest.raises(ValueError, match="unknown classes 'seven'"):
        bad.setup(SimpleNamespace(world_size=1, strategy=None, is_global_zero=True, log_dir=str(tmp_path), default_root_dir=str(tmp_path)),
                  TinyCNN(), "fit")
