"""benchmarks/bench_dashboard.py --quick runs end to end and ends with its name=value line, whose
values keep what a wrong number breaks even at --quick sizes: the first view loads the run, so it
cannot take much less than ``I2XRun.load``; the explanation (HDBSCAN and ridge fits over the run)
does more than loading it; every request is answered, in a finite time."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

REPO = Path(__file__).resolve().parents[1]
INTERACTIONS = ("prototype", "sprite", "image", "image_png", "overview")


@pytest.mark.slow
def test_dashboard_benchmark_quick(tmp_path):
    out = tmp_path / "dashboard.md"
    proc = run_benchmark(REPO / "benchmarks" / "bench_dashboard.py", "--quick", "--out", out, tmp_path=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    pairs = {k: float(v) for k, v in (kv.split("=") for kv in last.split())}
    assert set(pairs) == {"first_view_vs_load", "explanation_vs_load", *(f"{name}_p95_ms" for name in INTERACTIONS)}
    assert all(math.isfinite(v) and v > 0 for v in pairs.values()), pairs
    assert pairs["first_view_vs_load"] > 0.5, "the first view loads the run: it cannot be much faster than a load"
    assert pairs["explanation_vs_load"] > 1, "the explanation fits HDBSCAN and ridge over the loaded run"
    assert out.read_text().startswith("# Dashboard: first view and interactions")
