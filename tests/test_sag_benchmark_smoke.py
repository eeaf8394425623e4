"""benchmarks/sag.py --quick runs end to end and ends with its name=value line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sag_benchmark_quick(tmp_path):
    out = tmp_path / "sag.md"
    fig = tmp_path / "sag.png"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sag.py"), "--quick", "--out", str(out), "--figure", str(fig)],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # this checkout's lightning_i2x
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    pairs = dict(kv.split("=") for kv in last.split())
    assert {"multi_mse_share_cnn", "sag_seconds_per_image_cnn", "mse_stats_cost_probe_passes_cnn", "sag_measure_cost_probe_passes",
            "cnn_test_accuracy", "size_slack_saved_proto"} <= set(pairs)
    assert out.read_text().startswith("# Structured attention graphs") and fig.read_bytes()[:4] == b"\x89PNG"
