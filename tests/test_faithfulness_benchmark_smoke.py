"""Smoke test of benchmarks/faithfulness.py: it runs with --quick in its own process, writes its
table and ends with its ratios as ``name=value`` pairs. A --quick run measures nothing, so what is
asserted is what a wrong number breaks even there: AUC ratios of a plausible size (AUCs lie in
[0, 1] and the methods are not orders of magnitude apart), a gap over random within [-1, 1], time
ratios that a unit slip breaks, and the script's own check that the batched metric equals the
per-image loop to 1e-6 (it exits non-zero otherwise)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ("igos_pp_vs_gradcam_deletion", "igos_pp_vs_gradcam_insertion", "igos_pp_minus_gradcam_deletion_ci_high",
            "igos_pp_minus_gradcam_insertion_ci_low", "min_gap_over_random", "igos_pp_probe_passes", "batched_vs_loop",
            "metric_probe_passes")
BOUNDS = {
    "igos_pp_vs_gradcam_deletion": (0.2, 5.0), "igos_pp_vs_gradcam_insertion": (0.2, 5.0),
    # bounds of intervals of differences of AUCs in [0, 1]: a sign slip or a missing mean breaks them
    "igos_pp_minus_gradcam_deletion_ci_high": (-1.0, 1.0), "igos_pp_minus_gradcam_insertion_ci_low": (-1.0, 1.0),
    "min_gap_over_random": (-1.0, 1.0),  # a difference of differences of AUCs in [0, 1]; a poor map makes it negative
    "igos_pp_probe_passes": (2.0, 1e6),  # even --quick's 2 iterations x 3 path points x 4 integrals exceed one pass
    "batched_vs_loop": (0.2, 1000.0),  # the loop runs one forward per image and step
    "metric_probe_passes": (0.5, 1e4),  # 2 x 64 steps of forwards against one forward + backward
}


@pytest.mark.slow
def test_faithfulness_benchmark_quick_run(tmp_path):
    out = tmp_path / "faithfulness.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = run_benchmark(ROOT / "benchmarks" / "faithfulness.py", "--quick", "--threads", "1", "--out", out, tmp_path=tmp_path,
                         env=env, timeout=900)
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1]
    pairs = dict(token.split("=", 1) for token in last.split())
    assert tuple(pairs) == EXPECTED, last
    for key, value in pairs.items():
        lo, hi = BOUNDS[key]
        assert math.isfinite(float(value)) and lo <= float(value) <= hi, f"{key}={value} outside [{lo}, {hi}]"
    text = out.read_text()
    assert "| " in text and "command: `python benchmarks/faithfulness.py" in text and "--quick" in text
    assert "igos++" in text and "random" in text and "95 % t interval" in text
    for fill in ("optimiser's baseline (authors' blur)", "strong blur (0.22 of the side)", "zero"):
        assert f"| {fill} |" in text, fill
    assert "checked equal to 1e-06, else the script fails" in text and "median of 3 timed rounds after a warm-up" in text
    for field in ("- commit: ", "- packages: ", "- load average at end: "):
        assert field in text, field
