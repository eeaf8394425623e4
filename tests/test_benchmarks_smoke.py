"""Smoke tests of the benchmark scripts: each runs with --quick in its own process and ends with
its ratios as ``name=value`` pairs. Timings of a --quick run mean nothing, so what is asserted is
what a wrong number breaks even there: inertia ratios near 1 (the same data, one objective),
growth exponents of a plausible size, time ratios within wide bounds that a unit slip (ms for s)
or a missing variant breaks, import counts exactly, and the scripts' own equality checks (the
probe-pass benchmark exits non-zero when pytorch-grad-cam at feature size differs from the
record)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "bench_probe_pass": ("record_vs_forward", "gradcam_lib_vs_record", "gradcam_feature_vs_record"),
    "bench_prototypes": ("sklearn_sample_vs_faiss_time", "faiss_vs_sklearn_sample_inertia", "minibatch_vs_faiss_time",
                         "faiss_vs_minibatch_inertia", "sklearn_vs_faiss_time", "faiss_vs_sklearn_inertia",
                         "sklearn_vs_faiss_time_1thread", "sklearn_vs_faiss_time_spread"),
    "bench_import": ("import_ratio", "own_optional_imports"),
    "bench_overhead": ("epoch_overhead", "overhead_vs_probe_pass", "record_speedup_vs_0_1", "analysis_growth_exponent_T",
                       "analysis_growth_exponent_N"),
    "paper_protocol": tuple(f"{name}{rule}" for rule in ("", "_difference") for name in (
        "confusions_curated_full_vs_full_full", "accuracy_delta_curated_full_vs_full_full", "confusions_mask_full_vs_full_full",
        "accuracy_delta_mask_full_vs_full_full", "confusions_penalise_full_vs_full_full", "accuracy_delta_penalise_full_vs_full_full",
        "flagged_share", "seeds_curated_fewer", "seeds_compared")) + ("accuracy_full_full",),
}
# a ratio of confusion counts is n/a, the report saying why, when full -> full had no confusion of the pair
NA_WITH_REASON = {k: "n/a (full -> full had 0 confusions)" for k in EXPECTED["paper_protocol"] if k.startswith("confusions_")}

TIME = (0.05, 50.0)  # a ratio of two timings of comparable work, however noisy a tiny run is
BOUNDS = {
    # k-means of one data set scored by one objective: the methods land within 10 % of each other
    "faiss_vs_sklearn_sample_inertia": (0.9, 1.1), "faiss_vs_minibatch_inertia": (0.9, 1.1), "faiss_vs_sklearn_inertia": (0.9, 1.1),
    "sklearn_sample_vs_faiss_time": TIME, "minibatch_vs_faiss_time": TIME, "sklearn_vs_faiss_time": TIME,
    "sklearn_vs_faiss_time_1thread": TIME, "sklearn_vs_faiss_time_spread": (1.0, 50.0),  # max / min of positive ratios
    # the record does a forward and part of a backward; the library a forward, a whole backward (and a second forward)
    "record_vs_forward": TIME, "gradcam_lib_vs_record": TIME, "gradcam_feature_vs_record": TIME,
    # --quick fits last a second or two, so on a shared machine either may be several times the
    # other: only a gross error (a fit counted twice, seconds read as ms) leaves these bounds
    "epoch_overhead": (-0.95, 50.0), "overhead_vs_probe_pass": (-1e4, 1e4), "record_speedup_vs_0_1": (0.1, 10.0),
    # explain's cost grows with T and N, roughly linearly (its goal is <= 1.2)
    "analysis_growth_exponent_T": (0.2, 2.5), "analysis_growth_exponent_N": (0.2, 2.5),
    # importing lightning_i2x imports lightning, so it cannot take much less time; lightning_i2x's
    # own import loads none of grad-cam, cv2, matplotlib
    "import_ratio": (0.5, math.inf), "own_optional_imports": (0.0, 0.0),
    # confusion ratios are counts over counts; accuracy differences are percentage points; a share
    # of the pair's training images is a fraction; two epochs of training beat chance (10 classes)
    **{k: (0.0, math.inf) for k in NA_WITH_REASON}, "accuracy_full_full": (20.0, 100.0),
    **{k: (-100.0, 100.0) for k in EXPECTED["paper_protocol"] if k.startswith("accuracy_delta_")},
    **{k: (0.0, 1.0) for k in EXPECTED["paper_protocol"] if k.startswith("flagged_share")},
    # counts of seeds: --quick runs one
    **{k: (0.0, 1.0) for k in EXPECTED["paper_protocol"] if k.startswith("seeds_")},
}


def _run(name, tmp_path, *extra):
    out = tmp_path / f"{name}.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = run_benchmark(ROOT / "benchmarks" / f"{name}.py", "--quick", "--out", out, *extra, tmp_path=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{name} printed nothing"
    return proc, parse_ratios(lines[-1]), out.read_text()


def parse_ratios(line: str) -> dict[str, float | None]:
    pairs = {}
    for token in line.split():
        name, sep, value = token.partition("=")
        assert sep and name and value, f"not a name=value pair: {token!r} in {line!r}"
        pairs[name] = None if value == "n/a" else float(value)
    return pairs


def test_parse_ratios():
    assert parse_ratios("a=1.5 b_c=2e-3 d=n/a") == {"a": 1.5, "b_c": 0.002, "d": None}
    with pytest.raises(AssertionError):
        parse_ratios("a=1 b")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_quick_run(name, tmp_path):
    proc, ratios, text = _run(name, tmp_path)
    assert set(ratios) == set(EXPECTED[name]), f"{name} last line: {ratios}"
    for key, value in ratios.items():
        if value is None and key in NA_WITH_REASON:
            assert NA_WITH_REASON[key] in text, f"{key} is n/a without saying why"
            continue
        assert value is not None, f"{key}=n/a in a full checkout"
        assert math.isfinite(value), f"{key}={value}"
        lo, hi = BOUNDS[key]
        assert lo <= value <= hi, f"{key}={value} outside [{lo}, {hi}]"
    if name == "bench_overhead":  # one round: both come from the same pair of fits, so they share a sign
        assert (ratios["epoch_overhead"] >= 0) == (ratios["overhead_vs_probe_pass"] >= 0), ratios
    assert "| " in text and "command: `python benchmarks/" in text and "--quick" in text
    for field in ("- commit: ", "- packages: ", "- load average at start: ", "- load average at end: "):
        assert field in text, field


@pytest.mark.slow
def test_overhead_without_the_0_1_commit_says_n_a(tmp_path):
    """A shallow clone has no 0.1 to import: the speed-up is n/a, with the reason, not a crash."""
    proc, ratios, text = _run("bench_overhead", tmp_path, "--baseline-ref", "0000000")
    assert ratios["record_speedup_vs_0_1"] is None
    assert "record_speedup_vs_0_1 = n/a: no baseline" in text and "no baseline" in proc.stderr
    assert all(v is not None for k, v in ratios.items() if k != "record_speedup_vs_0_1")
