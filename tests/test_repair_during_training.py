"""The opt-in repair during training: off (training bit for bit unchanged, and said so) until a record
flags a suspect; from that record on, the latent penalty of the suspects' directions; refused at
construction or setup where it cannot work."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_i2x import I2XCallback, RepairDuringTraining
from lightning_i2x.callbacks import RepairStart
from lightning_i2x.finetune import latent_penalty
from lightning_i2x.measures import RelianceMeasure

from .conftest import trainer_kwargs
from .test_shortcut_finetune import EXPLAIN, FlatCNN, planted

# flags the most relied-on prototypes of the planted digits from the first records (the defaults do not:
# on 8x8 digits the model reads the digit too much for the swatch to stand out)
EASY = dict(min_reliance_per_location=0.02, min_localisation=0.0, min_intensity_quantile=0.0)
NEVER = dict(min_reliance=10.0)


def fit(tmp_path, data, repair_kwargs=None, epochs=3):
    pl.seed_everything(0, verbose=False)
    model = FlatCNN()
    i2x = I2XCallback(data[1], num_prototypes=8, run_dir=tmp_path / "run", explain=EXPLAIN, views=False,
                      measures=[RelianceMeasure(when="record", n_random=2)])
    repair = None if repair_kwargs is None else RepairDuringTraining(i2x, **repair_kwargs)
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=epochs, callbacks=[i2x] + ([repair] if repair else []), logger=False,
                                          deterministic=True))
    trainer.fit(model, DataLoader(data[0], batch_size=64, shuffle=True), DataLoader(data[1], batch_size=100))
    return model, i2x, repair


@pytest.fixture(scope="module")
def decoy(digits):
    return planted(digits, decoy=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, decoy):
    return fit(tmp_path_factory.mktemp("plain"), decoy)


def test_unflagged_it_changes_nothing_and_says_so(tmp_path, decoy, plain):
    with pytest.warns(UserWarning, match=r"RepairDuringTraining did nothing: none of the 3 records read flagged.*failed reliance"):
        model, _, repair = fit(tmp_path, decoy, NEVER)
    assert repair.started is None and repair.weight is None and repair.last_report.verdict == "none"
    assert "repair-during-training" not in repair.i2x.run.attachments
    state = plain[0].state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "no flag: training is bit for bit the plain one"


def test_from_the_first_flagged_record_it_penalises_the_suspects_directions(tmp_path, decoy, plain):
    model, i2x, repair = fit(tmp_path, decoy, EASY)
    start = repair.started
    steps = -(-len(decoy[0]) // 64)  # batches an epoch; one record at each epoch's end
    assert isinstance(start, RepairStart) and start.epoch == start.record < 2 and start.step == steps * (start.record + 1)
    assert start.prototypes and start.rank >= 1 and repair.weight > 0
    assert f"record {start.record} (epoch {start.epoch}, step {start.step})" in start.describe()
    # the suspects are what the rule names at that record (read back from the run's reliance then)
    assert repair.last_report.suspects == start.prototypes
    # the run says that training changed, from which record, and why
    kept, checkpoint = i2x.run.attachment("repair-during-training")
    assert checkpoint == start.record and kept["step"] == start.step and tuple(kept["prototypes"]) == start.prototypes
    assert kept["layers"] == "after" and "relied on" in kept["rule"]
    # what it penalised went down against the plain fit of the same epochs and seed
    x = decoy[1].tensors[0][:200]
    basis = repair.state_dict()["basis"]

    def penalty(m):
        return float(latent_penalty(m, x, m.features, basis, generator=torch.Generator().manual_seed(3)).detach())

    assert penalty(model) < 0.5 * penalty(plain[0])


def test_its_state_resumes(tmp_path, decoy):
    _, i2x, repair = fit(tmp_path, decoy, EASY, epochs=2)
    assert repair.started is not None
    state = copy.deepcopy(repair.state_dict())
    again = RepairDuringTraining(i2x, **EASY)
    again.load_state_dict(state)
    assert again.started == repair.started and again.weight == repair.weight
    assert torch.equal(again.state_dict()["basis"], state["basis"])
    assert again.state_dict()["records_read"] == 2


def test_it_is_refused_where_it_cannot_work(tmp_path, decoy):
    with pytest.raises(ValueError, match=r"RelianceMeasure\(when='record'\)"):
        RepairDuringTraining(I2XCallback(decoy[1], num_prototypes=8, measures=[RelianceMeasure()]))
    i2x = I2XCallback(decoy[1], num_prototypes=8, run_dir=tmp_path / "run", views=False, measures=[RelianceMeasure(when="record")])
    with pytest.raises(TypeError, match="needs the trainer's I2XCallback"):
        RepairDuringTraining(object())
    with pytest.raises(ValueError, match="layers must be one of"):
        RepairDuringTraining(i2x, layers="head")
    with pytest.raises(ValueError, match="penalty_ratio must be a positive number"):
        RepairDuringTraining(i2x, penalty_ratio=0)
    with pytest.raises(ValueError, match=r"unknown suspect-rule threshold\(s\) \['min_relance'\]"):
        RepairDuringTraining(i2x, min_relance=0.1)
    alone = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[RepairDuringTraining(i2x)], logger=False))
    with pytest.raises(ValueError, match="not among the trainer's callbacks"):
        alone.fit(FlatCNN(), DataLoader(decoy[0], batch_size=64), DataLoader(decoy[1], batch_size=100))
    mixed = pl.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[i2x, RepairDuringTraining(i2x)], logger=False,
                                        precision="bf16-mixed"))
    with pytest.raises(ValueError, match="needs full precision"):
        mixed.fit(FlatCNN(), DataLoader(decoy[0], batch_size=64), DataLoader(decoy[1], batch_size=100))


def test_a_resumed_fit_goes_on_penalising_as_the_uninterrupted_one(tmp_path, decoy):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_i2x import I2XRun

    def run(root, run_dir, ckpt_path=None):
        pl.seed_everything(0, verbose=False)
        model = FlatCNN()
        i2x = I2XCallback(decoy[1], num_prototypes=8, run_dir=run_dir, explain=EXPLAIN, views=False,
                          measures=[RelianceMeasure(when="record", n_random=2)])
        repair = RepairDuringTraining(i2x, **EASY)
        ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
        kw = trainer_kwargs(root, max_epochs=3, callbacks=[i2x, repair, ckpt], logger=False, deterministic=True)
        kw["enable_checkpointing"] = True
        pl.Trainer(**kw).fit(model, DataLoader(decoy[0], batch_size=64), DataLoader(decoy[1], batch_size=100), ckpt_path=ckpt_path)
        return model, repair

    whole, first = run(tmp_path / "whole", tmp_path / "run")
    assert first.started is not None and first.started.record < 2, "switched on before the checkpoint resumed from"
    I2XRun.load(tmp_path / "run").truncate(2)  # as if stopped after the second epoch's checkpoint
    resumed, again = run(tmp_path / "resumed", tmp_path / "run", ckpt_path=tmp_path / "whole" / "ckpt" / "epoch=1.ckpt")
    assert again.started == first.started and again.weight == first.weight
    state = whole.state_dict()
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=1e-6, msg=f"{k}: the resumed fit's last epoch differs")
