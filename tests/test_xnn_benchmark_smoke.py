"""benchmarks/xnn.py --quick runs end to end and ends with its name=value line, whose values keep
the invariants a wrong number breaks even at --quick sizes: R^2 at most 1, n_x within the range
tried, a positive cost, correlations in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_xnn_benchmark_quick(tmp_path, local_data_dir):
    out = tmp_path / "xnn.md"
    proc = run_benchmark(REPO / "benchmarks" / "xnn.py", "--quick", "--threads", "1", "--out", out, "--data-dir", local_data_dir,
                         tmp_path=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    pairs = {k: float(v) for k, v in (kv.split("=") for kv in last.split())}
    assert {"min_r2_mnist", "max_n_x_mnist", "fit_probe_passes_mnist", "ablation_r2_full", "ablation_r2_no_rec", "ablation_r2_no_pt",
            "ablation_r2_mse_rec", "planted_r2", "planted_min_matched_corr"} <= set(pairs)
    for key, value in pairs.items():
        if "r2" in key:
            assert value <= 1.0, f"{key}={value}: an R^2 is at most 1"
    assert 1 <= pairs["max_n_x_mnist"] <= 2, "--quick tries n_x = 1 and 2"
    assert 0 < pairs["fit_probe_passes_mnist"] < 1e5
    assert 0.0 <= pairs["planted_min_matched_corr"] <= 1.0
    text = out.read_text()
    assert text.startswith("# XNN x-features") and "| mnist | all |" in text
