"""Finding and fixing a shortcut on a small real run: reliance stored as a measure, the suspect rule
on the run, targeting prototypes (checked against the brute force of test_finetune), the random
mask fill, the explanation penalty, the same-budget control and the errors."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_i2x import ExplainOptions, FinetuneOptions, I2XCallback, I2XRun, PerturbationFinetuner
from lightning_i2x.analysis import Reliance
from lightning_i2x.errors import I2XRunError
from lightning_i2x.finetune import MaskedDataset, PairTarget, PrototypeTarget, input_gradient_penalty
from lightning_i2x.measures import RelianceMeasure, prototype_reliance, reliance_of_run
from lightning_i2x.perturb import pixel_mask

from .conftest import TinyCNN, trainer_kwargs
from .test_finetune import brute_force

EXPLAIN = ExplainOptions(min_flips=1)


def planted(digits, decoy: bool):
    """8x8 digits with a 2x2 swatch (one 4x4-map cell) in a random corner; shade = label (decoy)."""
    out = []
    for split, ds in enumerate(digits):
        x, y = (t.clone() for t in ds.tensors)
        if decoy:
            rng = np.random.default_rng(split)
            for i in range(len(x)):
                r, c = rng.integers(0, 2, size=2) * 6
                x[i, 0, r : r + 2, c : c + 2] = -1.0 + 2.0 * float(y[i]) / 9.0
        t = TensorDataset(x, y)
        t.classes = [f"d{c}" for c in range(10)]
        out.append(t)
    return out


class FlatCNN(TinyCNN):
    """TinyCNN with a position-aware head (flatten + linear), so a corner swatch is as easy to use
    as the digit (a global-pooling head dilutes a one-cell swatch 16-fold)."""

    def __init__(self, lr: float = 0.01):
        super().__init__(lr=lr)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10))


def record(root, data, measures=(), epochs=3, through_callback=True):
    """A TinyCNN run; the measures run at the end of fit by the callback (or, with
    ``through_callback=False``, called right after fit exactly as the callback calls them)."""
    through = through_callback
    pl.seed_everything(0, verbose=False)
    model = FlatCNN()
    cb = I2XCallback(data[1], num_prototypes=8, run_dir=root / "run", explain=EXPLAIN, views=False,
                     measures=list(measures) if through else [])
    trainer = pl.Trainer(**trainer_kwargs(root, max_epochs=epochs, callbacks=[cb], logger=False, deterministic=True))
    trainer.fit(model, DataLoader(data[0], batch_size=64, shuffle=True), DataLoader(data[1], batch_size=100))
    if not through:
        for m in measures:
            m(model, cb.run, None, cb.explanation, forward_fn=None)
    return model, I2XRun.load(cb.run.path)


@pytest.fixture(scope="module")
def decoy_run(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("decoy")
    data = planted(digits, decoy=True)
    model, run = record(root, data, [RelianceMeasure(n_random=2)])
    return SimpleNamespace(model=model, run=run, data=data, state=copy.deepcopy(model.state_dict()), root=root)


def _model(state) -> FlatCNN:
    m = FlatCNN()
    m.load_state_dict(state)
    return m


# -- reliance as a measure -------------------------------------------------------------------------
def test_reliance_measure_stores_what_prototype_reliance_computes(decoy_run):
    run = decoy_run.run
    assert "reliance" in run.attachments
    stored = run.stored_reliance()
    x, y = decoy_run.data[1].tensors
    direct = prototype_reliance(decoy_run.model, x, y, run.assignment(), run.num_prototypes, n_random=2, num_classes=10,
                                max_images_per_prototype=64)
    # the run stores its probe images in float16: the resampled pixels differ by that rounding (1e-6 held for the blur)
    np.testing.assert_allclose(stored.reliance, direct.reliance, atol=1e-5, equal_nan=True)
    assert "reliance_max" in run.metrics()
    # by hand, not stored: the same numbers
    again = reliance_of_run(run, decoy_run.model, n_random=2, store=False)
    np.testing.assert_allclose(again.reliance, stored.reliance, atol=1e-6, equal_nan=True)


def test_reliance_measure_runs_in_the_callback(tmp_path, digits):
    _, run = record(tmp_path, digits, [RelianceMeasure(n_random=1)], epochs=1, through_callback=True)
    assert isinstance(run.stored_reliance(), Reliance)
    # the run's explanation now names its suspects (a tuple, possibly empty: the rule found no shortcut)
    expl = run.explain()
    assert isinstance(expl.suspects, tuple) and list(expl.suspects) == run.suspects()
    assert "## Suspected shortcuts" in expl.to_markdown() and expl.to_dict()["suspects"] == list(expl.suspects)


def test_reliance_measure_options_are_checked():
    with pytest.raises(ValueError, match=r"RelianceMeasure.n_random must be an integer >= 1, got 0"):
        RelianceMeasure(n_random=0)
    with pytest.raises(ValueError, match=r"RelianceMeasure.fill must be one of"):
        RelianceMeasure(fill="zeros")
    with pytest.raises(ValueError, match=r"RelianceMeasure.when must be one of"):
        RelianceMeasure(when="epoch")
    with pytest.raises(ValueError, match=r"RelianceMeasure.max_images_per_prototype must be an integer >= 1 or None"):
        RelianceMeasure(max_images_per_prototype=0)
    with pytest.raises(ValueError, match=r"RelianceMeasure.batch_size"):
        RelianceMeasure(batch_size=1.5)


# -- suspects on the run -----------------------------------------------------------------------------
def swatch_share(run, protos) -> float:
    """Share of the prototypes' probe locations that are corner cells (evaluation only)."""
    a = run.assignment()
    corner = np.zeros(a.shape[1:], bool)
    corner[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    hit = np.isin(a, protos)
    return float((hit & corner).sum() / max(1, hit.sum()))


def planted_run(path, relied_on_corner: bool) -> I2XRun:
    """A run with a planted layout (tests/test_suspects.layout: prototype 0 a corner swatch, 1 an
    object part that moves, 2 border background, 3 the rest), GradCAM salient on 0 and 1, and a
    planted reliance: the model leans on the swatch (decoy) or ignores it (clean)."""
    from lightning_i2x.prototypes import Prototypes

    from .test_suspects import layout

    a = layout(n=50)
    run = I2XRun.create(path, labels=np.arange(50) % 2, class_names=["a", "b"], feature_shape=(7, 7), num_prototypes=4)
    cams = np.where(np.isin(a, [0, 1]), 0.9, 0.1).astype(np.float32)
    for t in range(2):
        run.append_checkpoint(cams, np.full((50, 2), 0.5, np.float32), epoch=t, global_step=t)
    run.set_prototypes(Prototypes(np.eye(2), np.zeros(2), np.eye(4, 2)), a, reference=1)
    v = np.array([0.2 if relied_on_corner else 0.0, 0.3, 0.0, 0.01])
    z = np.zeros((4, 2))
    rel = Reliance(drop=v, random_drop=np.zeros(4), reliance=v, count=np.full(4, 50), class_drop=z, class_random_drop=z,
                   class_count=np.full((4, 2), 25), area=np.ones(4))
    run.save_attachment("reliance", arrays={**rel.to_arrays(), "reference": np.asarray(1)})
    return run


def test_run_suspects_flag_the_planted_shortcut(tmp_path):
    assert planted_run(tmp_path / "decoy", True).suspects() == [0]
    assert I2XRun.load(tmp_path / "decoy").suspects() == [0]  # read back from disk
    assert I2XRun.load(tmp_path / "decoy").explain().suspects == (0,)  # Explanation.suspects


def test_run_suspects_flag_nothing_on_the_planted_clean_case(tmp_path):
    assert planted_run(tmp_path / "clean", False).suspects() == []
    with pytest.raises(ValueError, match="unknown threshold"):
        I2XRun.load(tmp_path / "clean").suspects(min_relliance=0.1)


def corner_prototypes(run) -> list[int]:
    """The prototypes mostly on the corner cells (evaluation's ground truth: the planted swatch)."""
    return [k for k in range(run.num_prototypes) if swatch_share(run, [k]) >= 0.4] or [int(np.argmax(
        [swatch_share(run, [k]) for k in range(run.num_prototypes)]))]


def test_suspects_need_a_stored_reliance(tmp_path, digits):
    _, run = record(tmp_path, digits, [], epochs=2)
    with pytest.raises(I2XRunError, match=r"holds no reliance.*RelianceMeasure\(\).*reliance_of_run"):
        run.suspects()
    with pytest.raises(I2XRunError, match="holds no reliance"):
        PerturbationFinetuner(run.path, FinetuneOptions(prototypes="suspects"))


# -- targeting prototypes --------------------------------------------------------------------------
def test_prototypes_flag_exactly_the_brute_force_set(decoy_run):
    protos = corner_prototypes(decoy_run.run)
    model = _model(decoy_run.state)
    ft = PerturbationFinetuner(decoy_run.run.path, FinetuneOptions(prototypes=protos, explain=EXPLAIN), progress=False)
    assert ft.targets() == [PrototypeTarget(protos)]
    sel = ft.select(model, DataLoader(decoy_run.data[0], batch_size=64))
    x, y = decoy_run.data[0].tensors
    flagged, regions, borderline = brute_force(model, decoy_run.run, x, y, list(range(10)), protos)
    assert 0 < flagged.sum()
    differ = np.flatnonzero(sel.flagged != flagged)
    assert borderline[differ].all() and differ.size <= 2
    ok = np.flatnonzero(~borderline)
    np.testing.assert_array_equal(sel.regions[ok], regions[ok])
    # every class can be flagged, not only a pair's
    assert len(np.unique(y.numpy()[sel.flagged])) > 2


def test_random_fill_changes_only_flagged_pixels_and_stays_in_range(decoy_run):
    protos = corner_prototypes(decoy_run.run)
    model = _model(decoy_run.state)
    ft = PerturbationFinetuner(decoy_run.run.path, FinetuneOptions(prototypes=protos, mode="mask", mask_fill="random", seed=3), progress=False)
    ds = decoy_run.data[0]
    sel = ft.select(model, DataLoader(ds, batch_size=64))
    cur = ft.curated_dataset(ds, sel)
    assert isinstance(cur.dataset, MaskedDataset) and cur.dataset.fill == "random"
    x = ds.tensors[0]
    changed = 0
    for j, i in enumerate(sel.indices):
        new = cur[j][0]
        diff = (new != x[i]).numpy()[0]
        allowed = pixel_mask(sel.regions[j], (8, 8)) if sel.flagged[j] else np.zeros((8, 8), bool)
        assert not diff[~allowed].any()
        assert float(new.min()) >= float(x[i].min()) - 1e-6 and float(new.max()) <= float(x[i].max()) + 1e-6
        changed += int(diff.any())
    assert changed > 0


# -- penalise, control ----------------------------------------------------------------------------------
def gradient_share(model, x, y, masks) -> float:
    """Share of the squared input gradient (RRR's term) that falls in the flagged regions."""
    model = copy.deepcopy(model).eval()
    inside = input_gradient_penalty(model, x, y, masks, reduction="sum")
    total = input_gradient_penalty(model, x, y, torch.ones_like(masks), reduction="sum")
    return float(inside / total)


def test_penalise_moves_gradient_out_of_the_flagged_regions(decoy_run, tmp_path):
    protos = corner_prototypes(decoy_run.run)
    ds, val = decoy_run.data
    model = _model(decoy_run.state)
    ft = PerturbationFinetuner(decoy_run.run.path, FinetuneOptions(prototypes=protos, mode="penalise", schedule=("curated",), lr=0.01,
                                                                   control=True, seed=0, out_dir=tmp_path / "ft"), progress=False)
    sel = ft.select(model, DataLoader(ds, batch_size=64))
    f = np.flatnonzero(sel.flagged)
    x, y = ds.tensors[0][sel.indices[f]], ds.tensors[1][sel.indices[f]]
    masks = torch.from_numpy(np.stack([pixel_mask(r, (8, 8)) for r in sel.regions[f]])).float()
    before = gradient_share(model, x, y, masks)
    result = ft.fit(model, DataLoader(ds, batch_size=64, shuffle=True), DataLoader(val, batch_size=100), selection=sel)
    after, control = gradient_share(model, x, y, masks), gradient_share(ft.control_model, x, y, masks)
    assert after < 0.8 * before and after < control
    assert result.penalty == "input_gradient" and result.penalty_weight > 0 and result.flagged == f.size
    assert result.target_prototypes == protos and result.pairs == []
    assert result.control_accuracy_after is not None
    assert result.targeting_gain == pytest.approx(result.accuracy_after - result.control_accuracy_after)
    md = result.to_markdown()
    assert "the same budget of plain training" in md and "targeting adds" in md and "penalised" in md
    d = result.to_dict()
    assert d["control_accuracy_after"] == result.control_accuracy_after and d["target_prototypes"] == protos
    # the control started from the same weights and trained the same epochs, in place of the caller's model
    assert not all(torch.equal(a, b) for a, b in zip(ft.control_model.state_dict().values(), decoy_run.state.values()))


def test_no_control_says_so(decoy_run, tmp_path):
    model = _model(decoy_run.state)
    ft = PerturbationFinetuner(decoy_run.run.path, FinetuneOptions(prototypes=[0], mode="mask", schedule=("curated",), out_dir=tmp_path / "ft"),
                               progress=False)
    result = ft.fit(model, DataLoader(decoy_run.data[0], batch_size=64), DataLoader(decoy_run.data[1], batch_size=100))
    assert result.control_accuracy_after is None and result.targeting_gain is None
    assert "No same-budget control was run" in result.to_markdown()


# -- errors ------------------------------------------------------------------------------------------
def test_bad_targets_are_refused(decoy_run):
    path = decoy_run.run.path
    with pytest.raises(ValueError, match=r"prototypes \[8, 99\] are not prototypes of the run; its prototypes are 0..7"):
        PerturbationFinetuner(path, FinetuneOptions(prototypes=[1, 8, 99]))
    with pytest.raises(ValueError, match="FinetuneOptions.prototypes must be None when pairs are given"):
        PerturbationFinetuner(path, FinetuneOptions(prototypes=[1], pairs=[(0, 1)]))
    with pytest.raises(ValueError, match="FinetuneOptions.prototypes must be a non-empty list of prototype ids"):
        PerturbationFinetuner(path, FinetuneOptions(prototypes="all"))
    with pytest.raises(ValueError, match="FinetuneOptions.prototypes must be"):
        FinetuneOptions(prototypes=[])
    with pytest.raises(ValueError, match="FinetuneOptions.penalty must be one of"):
        FinetuneOptions(mode="penalise", penalty="l2")
    with pytest.raises(ValueError, match="FinetuneOptions.control must be True or False"):
        FinetuneOptions(control=1)
    with pytest.raises(ValueError, match="penalty='gradcam' needs"):
        PerturbationFinetuner(path, FinetuneOptions(prototypes=[1], mode="penalise", penalty="gradcam"), reshape_transform=lambda t: t)
    assert FinetuneOptions(prototypes="suspects", mode="penalise").to_dict()["prototypes"] == "suspects"


def test_stale_reliance_is_not_used(decoy_run, tmp_path):
    """A reliance measured on earlier prototypes (refitted at each record) is refused, not misread."""
    run = I2XRun.load(decoy_run.run.path)
    arrays, _ = run.attachment("reliance")
    arrays = dict(arrays)
    arrays["reference"] = np.asarray(run.reference - 1)
    run.save_attachment("reliance", arrays=arrays)
    assert run.stored_reliance() is None
    with pytest.raises(I2XRunError, match="measured on earlier prototypes"):
        run.suspects()
    reliance_of_run(run, decoy_run.model, n_random=2)  # measured again: usable
    assert isinstance(run.stored_reliance(), Reliance)


# -- what a user reads ---------------------------------------------------------------------------------
def test_summary_shows_reliance_and_suspects(tmp_path):
    from lightning_i2x.__main__ import reliance_summary

    text = reliance_summary(planted_run(tmp_path / "decoy", True))
    assert "| P-1 | +0.300 |" in text and "| P-0 | +0.200 |" in text
    assert "Shortcut suspects: P-0" in text
    bare = I2XRun.create(tmp_path / "bare", labels=np.zeros(3), class_names=["a"], feature_shape=(2, 2), num_prototypes=2)
    bare.append_checkpoint(np.zeros((3, 2, 2), np.float32), np.ones((3, 1), np.float32), epoch=0, global_step=0)
    assert "Not measured: add `RelianceMeasure()`" in reliance_summary(bare)


def test_gallery_labels_reliance(decoy_run):
    from lightning_i2x import viz as plots

    rel = decoy_run.run.stored_reliance()
    fig = plots.prototype_gallery(decoy_run.run, [0, 1])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("P-0") and f"rel {rel.reliance[0]:+.2f}" in t for t in texts), texts


def test_flag_samples_for_prototypes_by_hand():
    from lightning_i2x.finetune import flag_samples

    a = np.array([[0, 1, 2, 3], [3, 3, 3, 3], [1, 1, 0, 0]])
    sal = np.array([[True, False, False, False], [True] * 4, [False, False, False, True]])
    y = np.array([0, 5, 9])
    flags, regions = flag_samples(a, sal, y, [PrototypeTarget([0])], "salient")
    assert flags.tolist() == [[True, False, True]]  # any class; sample 2 holds 0 at a salient location
    assert regions.tolist() == [[True, False, False, False], [False] * 4, [False, False, False, True]]
    # "all": flagged wherever the prototype is, salient or not; a pair target keeps the salient rule
    sal[2] = False
    flags, regions = flag_samples(a, sal, y, [PrototypeTarget([0])], "all")
    assert flags.tolist() == [[True, False, True]] and regions[2].tolist() == [False, False, True, True]
    assert flag_samples(a, sal, y, [PairTarget((0, 9), [0])], "all")[0].tolist() == [[True, False, False]]
