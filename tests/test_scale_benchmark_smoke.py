"""The scale benchmark runs end to end at its --quick sizes (a smoke test, not a measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_scale_quick(tmp_path):
    out = tmp_path / "scale.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("record_peak_mb_growth=") and "inertia_vs_full=" in last
    assert "--quick" in out.read_text()
