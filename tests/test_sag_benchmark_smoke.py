"""benchmarks/sag.py --quick runs end to end and ends with its name=value line, whose values keep
the invariants a wrong number breaks even at --quick sizes: shares in [0, 1], MSE sizes within the
number of regions, a test accuracy above chance."""

from __future__ import annotations

from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sag_benchmark_quick(tmp_path):
    out = tmp_path / "sag.md"
    fig = tmp_path / "sag.png"
    proc = run_benchmark(REPO / "benchmarks" / "sag.py", "--quick", "--out", out, "--figure", fig, tmp_path=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    pairs = {k: float(v) for k, v in (kv.split("=") for kv in last.split())}
    assert {"multi_mse_share_cnn", "sag_seconds_per_image_cnn", "mse_stats_cost_probe_passes_cnn", "sag_measure_cost_probe_passes",
            "cnn_test_accuracy", "size_slack_saved_proto"} <= set(pairs)
    for key, value in pairs.items():
        if key.startswith(("multi_mse_share_", "size_slack_saved_")):
            assert 0.0 <= value <= 1.0, f"{key}={value}: a share"
        elif key.startswith("mean_mse_size_"):
            assert 1.0 <= value <= 16.0, f"{key}={value}: an MSE has 1 to 16 regions (4 x 4 grid, K = 16 prototypes)"
        elif key.startswith(("sag_seconds_per_image_", "mse_stats_cost_", "sag_measure_cost_")):
            assert 0.0 < value < 1e4, f"{key}={value}"
    assert 0.15 < pairs["cnn_test_accuracy"] <= 1.0, "SmallCNN after its (short) epoch should beat chance (0.1)"
    assert pairs["blurred_over_full_median"] >= 0.0
    assert out.read_text().startswith("# Structured attention graphs") and fig.read_bytes()[:4] == b"\x89PNG"
