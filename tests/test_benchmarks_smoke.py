"""Smoke tests of the benchmark scripts: each runs with --quick in its own process and ends with
its ratios as ``name=value`` pairs. No timing is asserted (the numbers of a --quick run mean
nothing); only that the scripts run and report what they promise."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "bench_probe_pass": ("record_vs_forward", "gradcam_lib_vs_record"),
    "bench_prototypes": ("sklearn_vs_faiss_time", "faiss_vs_sklearn_inertia"),
    "bench_import": ("import_ratio", "own_optional_imports"),
    "bench_overhead": ("epoch_overhead", "overhead_vs_probe_pass", "record_speedup_vs_0_1", "analysis_growth_exponent_T",
                       "analysis_growth_exponent_N"),
    "paper_protocol": ("confusions_curated_full_vs_full_full", "accuracy_delta_curated_full_vs_full_full",
                       "confusions_mask_full_vs_full_full", "accuracy_delta_mask_full_vs_full_full"),
}

# an overhead is a ratio minus one: timing noise can make it slightly negative in a tiny run
MAY_BE_NEGATIVE = {"epoch_overhead"}
# an overhead per probe pass is a difference of noisy epoch times: any sign in a tiny run
ANY_SIGN_OVERHEAD = {"overhead_vs_probe_pass"}
# the record speed-up against 0.1 needs that version in the git history; a shallow clone has none
NAN_WITHOUT_HISTORY = {"record_speedup_vs_0_1"}
# accuracy differences (percentage points) take any sign; a ratio of confusion counts may be 0
ANY_SIGN = {"accuracy_delta_curated_full_vs_full_full", "accuracy_delta_mask_full_vs_full_full"}
MAY_BE_ZERO = {"confusions_curated_full_vs_full_full", "confusions_mask_full_vs_full_full", "own_optional_imports"}
# what a wrong number breaks even in a tiny run: importing lightning_i2x imports lightning, so it
# cannot take much less time; lightning_i2x's own import loads none of grad-cam, cv2, matplotlib
BOUNDS = {"import_ratio": (0.5, math.inf), "own_optional_imports": (0.0, 0.0)}


def parse_ratios(line: str) -> dict[str, float]:
    pairs = {}
    for token in line.split():
        name, sep, value = token.partition("=")
        assert sep and name and value, f"not a name=value pair: {token!r} in {line!r}"
        pairs[name] = float(value)
    return pairs


def test_parse_ratios():
    assert parse_ratios("a=1.5 b_c=2e-3") == {"a": 1.5, "b_c": 0.002}
    with pytest.raises(AssertionError):
        parse_ratios("a=1 b")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_quick_run(name, tmp_path):
    out = tmp_path / f"{name}.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{name} printed nothing"
    ratios = parse_ratios(lines[-1])
    assert set(ratios) == set(EXPECTED[name]), f"{name} last line: {lines[-1]!r}"
    for key, value in ratios.items():
        if key in NAN_WITHOUT_HISTORY and math.isnan(value):
            assert "no baseline" in proc.stderr, f"{key} is NaN without saying why"
            continue
        assert math.isfinite(value), f"{key}={value}"
        if key in BOUNDS:
            assert BOUNDS[key][0] <= value <= BOUNDS[key][1], f"{key}={value} outside {BOUNDS[key]}"
        if key in ANY_SIGN_OVERHEAD:
            continue
        if key in MAY_BE_ZERO:
            assert value >= 0.0, f"{key}={value}"
        elif key not in ANY_SIGN:
            assert value > (-1.0 if key in MAY_BE_NEGATIVE else 0.0), f"{key}={value}"
    text = out.read_text()
    assert "| " in text and "command: `python benchmarks/" in text and "--quick" in text
