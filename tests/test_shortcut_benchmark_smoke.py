"""Smoke tests of benchmarks/shortcut_calibrate.py and shortcut.py --quick (their numbers mean nothing at that size):
it runs, writes its table and ends with its name=value line."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_shortcut_calibrate_quick(tmp_path):
    out = tmp_path / "shortcut.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = run_benchmark(ROOT / "benchmarks" / "shortcut_calibrate.py", "--quick", "--rrr", "--threads", "1", "--out", out,
                         tmp_path=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1]
    ratios = dict(tok.split("=") for tok in last.split())
    assert set(ratios) == {"discovery_mnist", "false_flags_clean"}
    assert all(math.isfinite(float(v)) and float(v) >= 0 for v in ratios.values())
    text = out.read_text()
    assert "RRR oracle" in text and "--quick" in text


def _row(text: str, label: str) -> list[float]:
    """The means of a markdown row's "m ± s" cells."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label}"))
    return [float(c.split("±")[0]) for c in line.strip("|").split("|")[1:] if "±" in c]


@pytest.mark.slow
def test_shortcut_benchmark_quick(tmp_path):
    """benchmarks/shortcut.py --quick: every row of the table, and invariants a wrong number breaks:
    discovery and precision of one seed, shares of the gap in [0, 1], accuracies above chance."""
    out = tmp_path / "shortcut-bench.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = run_benchmark(ROOT / "benchmarks" / "shortcut.py", "--quick", "--threads", "1", "--out", out, tmp_path=tmp_path, env=env,
                         timeout=900)
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1]
    ratios = {k: float(v) for k, v in (tok.split("=") for tok in last.split())}
    assert set(ratios) == {"discovery_rate", "suspect_precision", "suspect_iou", "repair_gap", "rrr_gap", "control_drop",
                           "share_closed", "share_closed_rrr", "share_closed_masktune", "share_closed_pclarc",
                           "discovery_rate_with_refinement", "suspect_precision_with_refinement", "clean_refined_alarm_rate"}
    assert all(math.isfinite(v) for v in ratios.values())
    assert ratios["discovery_rate"] in (0.0, 1.0)  # one seed: found or not
    assert 0.0 <= ratios["suspect_precision"] <= 1.0 and 0.0 <= ratios["suspect_iou"] <= 1.0
    assert ratios["discovery_rate"] == 0.0 or ratios["suspect_precision"] > 0.0  # a discovery is a suspect on the artifact
    assert ratios["discovery_rate_with_refinement"] in (0.0, 1.0) and ratios["clean_refined_alarm_rate"] in (0.0, 1.0)
    assert ratios["discovery_rate_with_refinement"] >= ratios["discovery_rate"]  # the rule's suspects are kept
    assert ratios["discovery_rate_with_refinement"] == 0.0 or ratios["suspect_precision_with_refinement"] > 0.0
    for k in ("share_closed", "share_closed_rrr", "share_closed_masktune", "share_closed_pclarc"):
        assert 0.0 <= ratios[k] <= 1.0, k
    text = out.read_text()
    for row in ("clean-trained (ceiling)", "full -> full, same budget", "I2X auto: penalise", "I2X auto: latent (RR-ClArC)",
                "I2X auto, chosen on attacked validation", "P-ClArC", "MaskTune", "RRR oracle", "uses ground truth",
                "control: automatic rule on the clean model", "(calibration)"):
        assert row in text, row
    # accuracies are percentages, and a model trained on clean images is above chance (10 %) on clean test images
    ceiling = _row(text, "clean-trained (ceiling)")
    assert all(0.0 <= v <= 100.0 for v in ceiling[:2]) and ceiling[1] > 20.0, ceiling
    assert _row(text, "plain model on shortcut data")[1] > 10.0
    # the repair gap is the ceiling minus the chosen repair, in points
    chosen = _row(text, "I2X auto, chosen on attacked validation")
    assert ratios["repair_gap"] == pytest.approx(ceiling[0] - chosen[0], abs=0.11)
