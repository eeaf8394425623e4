"""benchmarks/shortcut_during.py --quick runs end to end (traced: tests/benchmark_run.py) and ends
with its name=value line, whose values keep what a wrong number breaks even at --quick sizes: shares
in [0, 1], a rate of seeds in [0, 1], a difference of accuracies within 100 points, every row."""

from __future__ import annotations

from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_shortcut_during_benchmark_quick(tmp_path, local_data_dir):
    out = tmp_path / "during.md"
    proc = run_benchmark(REPO / "benchmarks" / "shortcut_during.py", "--quick", "--threads", "1", "--out", out, "--variant",
                         "mnist:maxpool:swatch", "--data-dir", local_data_dir, tmp_path=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pairs = dict(kv.split("=") for kv in proc.stdout.strip().splitlines()[-1].split())
    assert set(pairs) == {"share_closed_during", "share_closed_after", "share_closed_plain_more", "during_minus_after",
                          "switched_on_rate", "first_record_fraction"}
    for key in ("share_closed_during", "share_closed_after", "share_closed_plain_more", "switched_on_rate"):
        assert 0.0 <= float(pairs[key]) <= 1.0, key
    assert abs(float(pairs["during_minus_after"])) <= 100.0
    if float(pairs["switched_on_rate"]) == 0:
        assert pairs["first_record_fraction"] == "n/a"
    else:
        assert 0 < float(pairs["first_record_fraction"]) <= 1
    text = out.read_text()
    assert text.startswith("# Repairing a shortcut during training") and "during: RepairDuringTraining" in text
    assert "clean-trained (ceiling)" in text and "seed 0: the post-hoc repair had" in text
