"""LightningCLI: examples/cli_config.yaml registers I2XCallback by class_path, probe and view
options included, and one epoch of ``fit`` runs with it."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_i2x import ExplainOptions, I2XCallback, I2XRun, ViewOptions

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "cli_config.yaml"


def test_the_config_registers_the_callback_with_valid_arguments():
    config = yaml.safe_load(CONFIG.read_text())
    [entry] = config["trainer"]["callbacks"]
    assert entry["class_path"] == "lightning_i2x.I2XCallback"
    args = entry["init_args"]
    assert args["probe"]["class_path"] == "cli.MNISTProbe"
    accepted = set(inspect.signature(I2XCallback).parameters)
    assert set(args) <= accepted, set(args) - accepted
    # the config spells out the view defaults, so it documents them: keep them in step
    assert ViewOptions(**args["views"]) == ViewOptions()
    assert ExplainOptions(**args["explain"]) == ExplainOptions()


@pytest.mark.slow
def test_lightning_cli_fits_one_epoch_with_the_callback(tmp_path, monkeypatch, local_data_dir):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.setenv("I2X_DATA_DIR", str(local_data_dir.resolve()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    cli = importlib.import_module("cli")
    result = cli.main([
        "fit", "--config", str(CONFIG), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1",
        "--data.train_size=1000", "--data.val_size=500", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.enable_checkpointing=false",
    ])
    [cb] = [c for c in result.trainer.callbacks if isinstance(c, I2XCallback)]
    assert type(cb.probe).__name__ == "MNISTProbe" and len(cb.probe) == 200
    assert cb.target_layer == "features" and cb.num_prototypes == 16 and cb.views == ViewOptions()
    assert cb.explain == ExplainOptions() and isinstance(cb.explain, ExplainOptions)  # nested YAML built the typed groups
    log_dir = Path(result.trainer.log_dir)
    run = I2XRun.load(log_dir / "i2x")
    assert run.num_checkpoints == 2 and run.class_names[7] == "seven" and run.images is not None  # val_check_interval 0.5
    assert "lightning_i2x.I2XCallback" in (log_dir / "config.yaml").read_text()
    assert run.config.explain == ExplainOptions() and run.config.target_layer == "features"
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    assert {"i2x/gallery", "i2x/beta", "i2x/class1/evolution", "i2x/class1/graph", "i2x/pair1"} <= set(acc.Tags()["images"])
