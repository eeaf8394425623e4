"""The distributed benchmark runs end to end at its --quick sizes in real gloo processes (a smoke
test, not a measurement), and its last line keeps what a wrong number breaks even there: the new
gather receives fewer bytes per rank than the whole-activation gather, the old gather's bytes
grow linearly in N (it sends N x d x h x w), and every new record's prototypes equal one
process's on the same probe (assignment and centroids to the bit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_distributed_quick(tmp_path):
    out = tmp_path / "distributed.md"
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the ranks import this checkout's package
    done = run_benchmark(REPO / "benchmarks" / "bench_distributed.py", "--quick", "--threads", "1", "--out", out, tmp_path=tmp_path,
                         env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    r = {k: float(v) for k, v in (kv.split("=") for kv in last.split())}
    assert r["new_vs_old_bytes_w2"] < 1, r
    assert 0.95 <= r["bytes_growth_old_w2"] <= 1.05, r  # share x d x h x w per rank: linear in N
    assert r["bytes_growth_new_w2"] < 0.5, r
    assert r["equal_to_single"] == 1 and r["centroid_max_rel_diff"] == 0, r
    text = out.read_text()
    assert "--quick" in text and "- commit: " in text and "| 2 | 256 | new |" in text
