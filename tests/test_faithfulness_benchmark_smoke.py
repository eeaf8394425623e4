"""Smoke test of benchmarks/faithfulness.py: it runs with --quick in its own process, writes its
table and ends with its ratios as ``name=value`` pairs. No number is asserted beyond being finite
and positive (a --quick run measures nothing)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ("igos_pp_vs_gradcam_deletion", "igos_pp_vs_gradcam_insertion", "min_gap_over_random", "batched_vs_loop",
            "metric_probe_passes")
ANY_SIGN = {"min_gap_over_random"}  # insertion - deletion over random: a poor map makes it negative


@pytest.mark.slow
def test_faithfulness_benchmark_quick_run(tmp_path):
    out = tmp_path / "faithfulness.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "faithfulness.py"), "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1]
    pairs = dict(token.split("=", 1) for token in last.split())
    assert tuple(pairs) == EXPECTED, last
    assert all(math.isfinite(float(v)) for v in pairs.values()), last
    assert all(float(v) > 0 for k, v in pairs.items() if k not in ANY_SIGN), last
    text = out.read_text()
    assert "| " in text and "command: `python benchmarks/faithfulness.py" in text and "--quick" in text
    assert "igos++" in text and "random" in text
