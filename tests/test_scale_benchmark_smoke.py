"""The scale benchmark runs end to end at its --quick sizes (a smoke test, not a measurement), and
its last line keeps what a wrong number breaks even there: the streamed prototypes' objective
within 10 % of the full computation's, the whole-network-graph path using more memory than the
record, memory ratios of a plausible size."""

from __future__ import annotations

from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_scale_quick(tmp_path):
    out = tmp_path / "scale.md"
    done = run_benchmark(REPO / "benchmarks" / "bench_scale.py", "--quick", "--out", out, tmp_path=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("record_peak_mb_growth=") and "inertia_vs_full=" in last
    r = {k: float(v) for k, v in (kv.split("=") for kv in last.split())}
    assert 0.9 <= r["inertia_vs_full"] <= 1.1, r  # one k-means objective, the same vectors
    assert r["old_vs_new_record"] > 1.2, r  # the graph from the input and every activation kept cost memory
    assert 0.5 <= r["new_batch_vs_forward"] <= 3.0 and 0.5 <= r["new_record_vs_forward"] <= 10.0, r
    assert 0.5 <= r["record_peak_mb_growth"] <= 3.0, r
    text = out.read_text()
    assert "--quick" in text and "- commit: " in text and "re-implementation in this script" in text
