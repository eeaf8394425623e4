"""What keeps a record's memory flat in the probe and its cost flat in the class count.

The measurements themselves are in ``benchmarks/bench_scale.py``; these tests pin the mechanisms:
the probe is neither copied nor hashed whole, the stored images are read memory-mapped, the pair
analysis is vectorised without changing a result, per-class text is bounded, and sharded strategies
are refused at setup.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

from lightning_i2x import I2XRun, I2XRunError, ViewOptions
from lightning_i2x.analysis import coefficient_signs, explain, pair_flips, pair_reversals
from lightning_i2x.callbacks._strategy import check_strategy
from lightning_i2x.record._probe import materialise_probe, probe_fingerprint
from lightning_i2x.viz import log_summary


def test_a_float32_probe_is_used_as_given_and_hashed_as_before():
    images, labels = torch.randn(40, 3, 30, 30), torch.arange(40) % 4
    got, got_labels, _ = materialise_probe((images, labels))
    assert got.data_ptr() == images.data_ptr()  # no copy of the user's tensor
    reference = hashlib.sha256()  # 0.2's fingerprint, over one whole copy: resumed runs must still match
    reference.update(str(tuple(images.shape)).encode())
    reference.update(images.numpy().tobytes())
    reference.update(labels.numpy().tobytes())
    assert probe_fingerprint(got, got_labels) == reference.hexdigest()[:16]


def test_a_non_finite_image_in_a_late_chunk_is_still_found():
    images = torch.zeros(600, 3, 64, 64)  # 48 KiB an image: several 8 MiB chunks
    images[-1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        materialise_probe((images, torch.zeros(600, dtype=torch.int64)))


def test_stored_probe_images_are_memory_mapped_and_damage_is_named(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((5, 1, 6, 6)).astype(np.float32)
    run = I2XRun.create(tmp_path / "run", labels=np.arange(5) % 2, class_names=["a", "b"], feature_shape=(2, 2), num_prototypes=2,
                        images=images)
    for r in (run, I2XRun.load(tmp_path / "run")):
        assert isinstance(r.images, np.memmap) and not r.images.flags.writeable
        np.testing.assert_array_equal(r.images, images.astype(np.float16))
    (tmp_path / "run" / "probe-images.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(I2XRunError, match="probe-images.npy"):
        I2XRun.load(tmp_path / "run")


def test_a_run_with_images_inside_probe_npz_still_loads(tmp_path):
    """Runs of 0.2 kept the images in probe.npz."""
    run = I2XRun.create(tmp_path / "run", labels=np.arange(4) % 2, class_names=["a", "b"], feature_shape=(2, 2), num_prototypes=2)
    images = np.ones((4, 1, 3, 3), np.float16)
    buf = io.BytesIO()
    np.savez(buf, labels=np.arange(4) % 2, images=images)
    (tmp_path / "run" / "probe.npz").write_bytes(buf.getvalue())
    assert run.images is None
    np.testing.assert_array_equal(I2XRun.load(tmp_path / "run").images, images)


@pytest.mark.parametrize("rule", ["edges", "difference"])
@pytest.mark.parametrize("significance", ["tau", "stderr"])
def test_every_pair_at_once_equals_one_pair_at_a_time(rule, significance):
    """The vectorised pair loop against the per-pair rule, brute force over all M(M-1)/2 pairs."""
    rng = np.random.default_rng(1)
    t, n, k, m = 6, 80, 5, 7
    e = explain(rng.random((t, n, k)), rng.random((t, n, m)), np.arange(n) % m, np.ones((n, k), bool), uncertain_rule=rule,
                significance=significance, min_flips=1, tau_scale=0.05, significance_level=0.5)
    expected = []
    signs = e.signs if e.signs is not None else coefficient_signs(e.beta, e.thresholds)
    for a in range(m):
        for b in range(a + 1, m):
            if rule == "edges":
                flips, magnitude, _ = pair_reversals(e.beta, signs, a, b)
            elif significance == "tau":
                flips, magnitude, _ = pair_flips(e.beta, e.thresholds, a, b)
            else:
                continue  # the interval signs of differences are internal; covered by the tau case
            expected += [(kk, (a, b), int(flips[kk]), float(flips[kk] * magnitude[kk])) for kk in np.flatnonzero(flips >= 1)]
    if rule == "difference" and significance == "stderr":
        assert e.uncertain, "the planted noise should give some uncertain prototypes"
        return
    got = sorted((u.prototype, u.classes, u.flips, round(u.score, 9)) for u in e.uncertain)
    assert got == sorted((p, c, f, round(s, 9)) for p, c, f, s in expected) and got
    assert len(e.learning_order()) == m * (m - 1) // 2


class _Texts:
    """A SummaryWriter stand-in that keeps the text it is given."""

    def __init__(self):
        self.tags = []

    def add_text(self, tag, text, step):
        self.tags.append((tag, text))

    def add_scalar(self, tag, value, step):
        pass


def test_per_class_text_is_bounded_and_the_summary_says_so(tmp_path):
    rng = np.random.default_rng(0)
    m, n = 12, 48
    run = I2XRun.create(tmp_path / "run", labels=np.arange(n) % m, class_names=[f"c{i}" for i in range(m)], feature_shape=(2, 2),
                        num_prototypes=3)
    for i in range(2):
        run.append_checkpoint(rng.random((n, 2, 2)), rng.dirichlet(np.ones(m), n), epoch=i, global_step=i)
    from lightning_i2x import Prototypes

    run.set_prototypes(Prototypes(np.eye(2, 4), np.zeros(2), rng.normal(size=(3, 2)), inertia=1.0), rng.integers(0, 3, (n, 2, 2)),
                       reference=1)
    expl = run.explain()
    sink = _Texts()
    log_summary(sink, run, expl, 1, ViewOptions(max_text_classes=4, max_classes=3))
    per_class = [t for t, _ in sink.tags if t != "i2x/summary"]
    summary = next(text for t, text in sink.tags if t == "i2x/summary")
    assert 0 < len(per_class) <= 3 and "of 12 classes" in summary and "max_text_classes" in summary
    sink = _Texts()
    log_summary(sink, run, expl, 1, ViewOptions())
    assert len([t for t, _ in sink.tags if t != "i2x/summary"]) == m


def test_sharded_strategies_are_refused_at_setup_and_ddp_is_not():
    for strategy in (FSDPStrategy(), ModelParallelStrategy()):
        with pytest.raises(ValueError, match="does not support strategy=.*ddp"):
            check_strategy(strategy)
    check_strategy(DDPStrategy())


def test_the_gpu_check_says_it_needs_a_gpu_on_a_cpu_machine():
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run for minutes")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
