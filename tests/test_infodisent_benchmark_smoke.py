"""benchmarks/infodisent.py --quick runs end to end and ends with its name=value line, whose values keep
the invariants a wrong number breaks even at --quick sizes: accuracies and purities in [0, 1], EPIC
changing no prediction, localisation shares in [0, 1], positive costs."""

from __future__ import annotations

from pathlib import Path

import pytest

from .benchmark_run import run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.usefixtures("local_data_dir")
def test_infodisent_benchmark_quick(tmp_path):
    out = tmp_path / "infodisent.md"
    proc = run_benchmark(REPO / "benchmarks" / "infodisent.py", "--quick", "--threads", "1", "--out", out, tmp_path=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pairs = {k: float(v) for k, v in (kv.split("=") for kv in proc.stdout.strip().splitlines()[-1].split())}
    for data in ("mnist", "fashionmnist"):
        for key in ("backbone_accuracy", "infodisent_accuracy", "epic_accuracy", "purity_backbone", "purity_infodisent", "purity_epic"):
            assert 0.0 <= pairs[f"{data}_{key}"] <= 1.0, f"{data}_{key}"
        assert pairs[f"{data}_epic_changed"] == 0, "EPIC keeps every prediction"
        assert pairs[f"{data}_epic_accuracy"] == pairs[f"{data}_backbone_accuracy"]
        for key in ("cache_probe_passes", "head_probe_passes", "epic_probe_passes"):
            assert 0.0 < pairs[f"{data}_{key}"] < 1e4
    for key in ("decoy_channel_localisation_mean", "decoy_kmeans_localisation_mean"):
        assert 0.0 <= pairs[key] <= 1.0
    assert 0 <= pairs["decoy_channel_classes_at_0.9"] <= 10
    assert out.read_text().startswith("# InfoDisent and EPIC channels")
