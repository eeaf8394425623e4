"""Smoke tests of benchmarks/shortcut_calibrate.py and shortcut.py --quick (their numbers mean nothing at that size):
it runs, writes its table and ends with its name=value line."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_shortcut_calibrate_quick(tmp_path):
    out = tmp_path / "shortcut.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "shortcut_calibrate.py"), "--quick", "--rrr", "--threads", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1]
    ratios = dict(tok.split("=") for tok in last.split())
    assert set(ratios) == {"discovery_mnist", "false_flags_clean"}
    assert all(math.isfinite(float(v)) and float(v) >= 0 for v in ratios.values())
    text = out.read_text()
    assert "RRR oracle" in text and "--quick" in text


@pytest.mark.slow
def test_shortcut_benchmark_quick(tmp_path):
    """benchmarks/shortcut.py --quick: every row of the table and the four ratios."""
    out = tmp_path / "shortcut-bench.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "shortcut.py"), "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1]
    ratios = dict(tok.split("=") for tok in last.split())
    assert set(ratios) == {"discovery_rate", "repair_gap", "rrr_gap", "control_drop"}
    assert all(math.isfinite(float(v)) for v in ratios.values())
    text = out.read_text()
    for row in ("clean-trained (ceiling)", "full -> full, same budget", "I2X auto: penalise", "RRR oracle", "uses ground truth",
                "control: automatic rule on the clean model"):
        assert row in text, row
