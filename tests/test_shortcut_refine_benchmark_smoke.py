"""benchmarks/shortcut_refine.py --quick runs end to end (traced: tests/benchmark_run.py) and ends
with its name=value line: rates in [0, 1] or n/a where nothing was asked, the calibration sweep
starting at the suspect rule's thresholds, every cell reported with both settings, and whether
the library's refined defaults equal the chosen setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_shortcut_refine_benchmark_quick(tmp_path, local_data_dir):
    out = tmp_path / "refine.md"
    proc = run_benchmark(REPO / "benchmarks" / "shortcut_refine.py", "--quick", "--threads", "1", "--out", out, "--variant",
                         "mnist:maxpool:cast", "--data-dir", local_data_dir, tmp_path=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pairs = dict(kv.split("=") for kv in proc.stdout.strip().splitlines()[-1].split())
    assert set(pairs) == {f"{n}_{s}" for n in ("found", "alarm", "precision", "cast_claims") for s in ("chosen", "rule")}
    for key, value in pairs.items():
        assert value == "n/a" or 0.0 <= float(value) <= 1.0, key
    assert pairs["found_rule"] == "n/a" and pairs["precision_rule"] == "n/a"  # a cast has nothing to be found
    assert pairs["cast_claims_rule"] != "n/a" and pairs["alarm_rule"] != "n/a"
    text = out.read_text()
    assert "The library's refined defaults (``REFINED_RULE_DEFAULTS`` and ``refine_suspects``' scale) " in text
    assert text.startswith("# Calibrating the refined suspects")
    sweep = text.split("### The calibration sweep")[1].split("\n| ")[2]  # the first row after the header's rule
    assert sweep.startswith("0.1 | 0.5 | 5 | 0.02 | 0.5 |"), sweep  # the rule's thresholds lead the sweep
    for cell, split in (("mnist:flatten:swatch", "calibration"), ("mnist:gap:swatch", "calibration"), ("mnist:maxpool:cast", "held-out")):
        for setting in ("the rule's", "chosen"):
            assert f"| {cell} | {split} | {setting} |" in text, (cell, setting)
