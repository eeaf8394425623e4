"""benchmarks/twin.py --quick runs end to end and ends with its name=value line, whose values keep
the invariants a wrong number breaks even at --quick sizes: shares and fidelities in [0, 1], a
positive cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_twin_benchmark_quick(tmp_path, local_data_dir):
    pytest.importorskip("skimage")
    out = tmp_path / "twin.md"
    proc = run_benchmark(REPO / "benchmarks" / "twin.py", "--quick", "--threads", "1", "--out", out, tmp_path=tmp_path, timeout=900,
                         env={"I2X_DATA_DIR": str(local_data_dir)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    pairs = {k: (None if v == "n/a" else float(v)) for k, v in (kv.split("=") for kv in last.split())}
    assert {"chain_graph_exact_share", "swap_graph_exact", "chain_fidelity_min", "mnist_fidelity", "fit_twin_seconds_median"} <= set(pairs)
    for key in ("chain_graph_exact_share", "swap_graph_exact", "chain_fidelity_min", "chain_intended_thickness_min", "mnist_fidelity",
                "mnist_intended_thickness"):
        assert pairs[key] is None or 0.0 <= pairs[key] <= 1.0, f"{key}={pairs[key]}: a share"
    assert 0.0 < pairs["fit_twin_seconds_median"] < 1e4
    assert out.read_text().startswith("# Causal twin surrogate")
