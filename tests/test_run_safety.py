"""Safe loading and crash safety of the run directory.

``I2XRun.load`` must either return the run the manifest describes or raise ``I2XRunError`` naming
the file at fault; it never unpickles (so a crafted file cannot run code), and a file the manifest
does not list (a temporary file, a checkpoint written just before a crash) is ignored. A writer
killed at any moment leaves a directory that loads to a consistent prefix of what it wrote.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lightning_i2x import Explanation, I2XRun, I2XRunError, Prototypes

N, M, H, W, K = 12, 3, 4, 4, 4
NUM_CHECKPOINTS = 4
CLASS_NAMES = ["cat", "dog", "owl"]


# -- a small run ----------------------------------------------------------------------------------
def _write_run(path: Path, seed: int = 0) -> dict:
    """A run with 4 checkpoints and prototypes from checkpoint 3; returns what was written."""
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % M
    images = rng.random((N, 1, 8, 8))
    run = I2XRun.create(
        path, labels=labels, class_names=CLASS_NAMES, feature_shape=(H, W), num_prototypes=K,
        fingerprint={"probe": "abc"}, images=images,
    )
    cams, confs = [], []
    for i in range(NUM_CHECKPOINTS):
        cam = rng.random((N, H, W))
        logits = rng.normal(size=(N, M))
        conf = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        assert run.append_checkpoint(cam, conf, epoch=i, global_step=10 * i) == i
        cams.append(cam.astype(np.float16).astype(np.float32))
        confs.append(conf.astype(np.float32))
    protos = Prototypes(rng.normal(size=(3, 5)), rng.normal(size=3), rng.normal(size=(K, 3)), inertia=1.5)
    assignment = rng.integers(0, K, (N, H, W))
    assignment[0, 0, :K] = np.arange(K)  # every prototype present somewhere
    run.set_prototypes(protos, assignment, reference=NUM_CHECKPOINTS - 1)
    return {
        "labels": labels, "images": images.astype(np.float16), "cams": np.stack(cams), "confidences": np.stack(confs),
        "prototypes": protos, "assignment": assignment, "manifest": run.manifest,
    }


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    _write_run(path)
    return path


def _ckpt(run_dir: Path, i: int) -> Path:
    return run_dir / "checkpoints" / f"ckpt-{i:05d}.npz"


def _proto_file(run_dir: Path) -> Path:
    return run_dir / json.loads((run_dir / "manifest.json").read_text())["prototypes"]["file"]


def _load_error(run_dir: Path, names: Path | str) -> str:
    """Load, expect I2XRunError, check its message names the file; return the message."""
    with pytest.raises(I2XRunError) as info:
        I2XRun.load(run_dir)
    msg = str(info.value)
    assert str(names) in msg, msg
    return msg


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _edit_manifest(run_dir: Path, edit) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    edit(manifest)
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


# -- round trip ---------------------------------------------------------------------------------
def test_round_trip_gives_identical_arrays(tmp_path):
    written = _write_run(tmp_path / "run")
    run = I2XRun.load(tmp_path / "run")
    assert run.num_checkpoints == NUM_CHECKPOINTS
    assert run.class_names == CLASS_NAMES and run.feature_shape == (H, W) and run.num_prototypes == K
    assert run.manifest == written["manifest"]
    assert run.checkpoints == [{"index": i, "epoch": i, "global_step": 10 * i} for i in range(NUM_CHECKPOINTS)]
    assert run.config is None and run.fingerprint == {"probe": "abc"} and run.errors == []
    np.testing.assert_array_equal(run.labels, written["labels"])
    np.testing.assert_array_equal(run.images, written["images"])
    np.testing.assert_array_equal(run.cams(), written["cams"])
    np.testing.assert_array_equal(run.confidences(), written["confidences"])
    np.testing.assert_array_equal(run.assignment(), written["assignment"])
    assert run.reference == NUM_CHECKPOINTS - 1
    for key, value in written["prototypes"].to_arrays().items():
        np.testing.assert_array_equal(run.prototypes.to_arrays()[key], value)


def test_a_loaded_run_explains_and_resumes(run_dir):
    run = I2XRun.load(run_dir)
    expl = run.explain(min_cluster_size=2)
    assert isinstance(expl, Explanation)
    assert expl.beta.shape == (NUM_CHECKPOINTS - 1, K, M) and np.isfinite(expl.beta).all()
    json.dumps(expl.to_dict(), allow_nan=False)
    assert isinstance(expl.to_markdown(), str)
    # the same explanation as from the arrays of the run that wrote it
    fresh = I2XRun.load(run_dir).explain(min_cluster_size=2)
    np.testing.assert_array_equal(expl.beta, fresh.beta)
    # appending after a load continues the listing
    assert run.append_checkpoint(np.zeros((N, H, W)), np.full((N, M), 1 / M), epoch=9, global_step=90) == NUM_CHECKPOINTS
    again = I2XRun.load(run_dir)
    assert again.num_checkpoints == NUM_CHECKPOINTS + 1
    np.testing.assert_array_equal(again.cams()[-1], 0.0)


# -- damaged files --------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 1, 10, 0.5, -1])
def test_a_truncated_checkpoint_is_an_error_naming_it(run_dir, keep):
    f = _ckpt(run_dir, 1)
    data = f.read_bytes()
    cut = int(keep * len(data)) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    f.write_bytes(data[:cut])
    _load_error(run_dir, f)


@pytest.mark.parametrize("target", ["checkpoint", "prototypes", "probe"])
def test_random_corruption_loads_or_raises_run_error(run_dir, target):
    """Flipped, overwritten and cut bytes anywhere in a file: a clean load or an I2XRunError."""
    f = {"checkpoint": _ckpt(run_dir, 2), "prototypes": _proto_file(run_dir), "probe": run_dir / "probe.npz"}[target]
    original = f.read_bytes()
    rng = random.Random(f"corrupt-{target}")
    errors = 0
    for trial in range(150):
        data = bytearray(original)
        if trial % 3 == 0:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        f.write_bytes(bytes(data))
        try:
            I2XRun.load(run_dir)
        except I2XRunError as e:
            assert str(f) in str(e)
            errors += 1
    assert errors > 50


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b'{"format": "lightning-i2x-run", "version": 1, "checkp', b"\xff\xfe\x00garbage\x80",
     b"[]", b"null", b'"text"', b"[" * 100_000],
    ids=["empty", "brace", "truncated", "binary", "list", "null", "string", "deep"],
)
def test_a_damaged_manifest_is_an_error_naming_it(run_dir, content):
    (run_dir / "manifest.json").write_bytes(content)
    _load_error(run_dir, run_dir / "manifest.json")


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
def test_a_truncated_manifest_is_an_error_naming_it(run_dir, cut):
    f = run_dir / "manifest.json"
    data = f.read_bytes()
    f.write_bytes(data[: int(cut * len(data))])
    _load_error(run_dir, f)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(format="some-other-run"),
        lambda m: m.pop("format"),
        lambda m: m.update(version=3),
        lambda m: m.update(version="1"),
        lambda m: m.pop("version"),
    ],
    ids=["other-format", "no-format", "version-3", "version-string", "no-version"],
)
def test_a_manifest_of_another_format_or_version_is_refused(run_dir, edit):
    _edit_manifest(run_dir, edit)
    _load_error(run_dir, run_dir / "manifest.json")


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("checkpoints"),
        lambda m: m.update(checkpoints={"0": "x"}),
        lambda m: m["checkpoints"][1].pop("file"),
        lambda m: m["checkpoints"][1].update(file=None),
        lambda m: m["checkpoints"][1].update(file="../../outside.npz"),
        lambda m: m["checkpoints"][1].update(file="/etc/passwd"),
        lambda m: m["checkpoints"][1].update(index=7),
        lambda m: m.update(feature_shape=[4]),
        lambda m: m.update(feature_shape="4x4"),
        lambda m: m.update(num_probe=-1),
        lambda m: m.update(num_prototypes=None),
        lambda m: m.update(class_names="cat"),
        lambda m: m.update(prototypes={"file": "prototypes/proto-00003.npz"}),
        lambda m: m.update(prototypes={"file": "prototypes/proto-00003.npz", "reference": 99}),
        lambda m: m.pop("errors"),
    ],
)
def test_a_malformed_manifest_is_an_error_naming_it(run_dir, edit):
    _edit_manifest(run_dir, edit)
    _load_error(run_dir, run_dir / "manifest.json")


def test_no_manifest_is_an_error(tmp_path):
    _load_error(tmp_path, tmp_path)
    _load_error(tmp_path / "missing", tmp_path / "missing")


@pytest.mark.parametrize("which", ["checkpoint", "prototypes", "probe"])
def test_a_missing_listed_file_is_an_error_naming_it(run_dir, which):
    f = {"checkpoint": _ckpt(run_dir, 2), "prototypes": _proto_file(run_dir), "probe": run_dir / "probe.npz"}[which]
    f.unlink()
    _load_error(run_dir, f.name)


@pytest.mark.parametrize(
    "arrays",
    [
        {"cams": np.zeros((N, H + 1, W), np.float16), "confidences": np.zeros((N, M), np.float32)},
        {"cams": np.zeros((N - 1, H, W), np.float16), "confidences": np.zeros((N - 1, M), np.float32)},
        {"cams": np.zeros((N, H, W), np.float16), "confidences": np.zeros((N, M + 1), np.float32)},
        {"cams": np.zeros((N, H, W), np.float16)},
        {"cams": np.full((N, H, W), "x"), "confidences": np.zeros((N, M), np.float32)},
    ],
    ids=["cams-shape", "probe-size", "classes", "no-confidences", "strings"],
)
def test_a_checkpoint_with_wrong_contents_is_an_error_naming_it(run_dir, arrays):
    _ckpt(run_dir, 1).write_bytes(_npz_bytes(**arrays))
    _load_error(run_dir, _ckpt(run_dir, 1))


@pytest.mark.parametrize(
    "change",
    [
        {"assignment": np.zeros((N, H, W + 1), np.int32)},
        {"assignment": np.full((N, H, W), K, np.int32)},
        {"assignment": np.full((N, H, W), -1, np.int32)},
        {"assignment": np.zeros((N, H, W), np.float32)},
        {"centroids": np.zeros((K + 1, 3), np.float32)},
        {"centroids": np.zeros((K, 2), np.float32)},
        {"bias": np.zeros(2, np.float32)},
        {"inertia": np.zeros(3)},
    ],
    ids=["assignment-shape", "id-too-large", "id-negative", "float-ids", "K", "dims", "bias", "inertia"],
)
def test_prototypes_with_wrong_contents_are_an_error_naming_them(run_dir, change):
    f = _proto_file(run_dir)
    with np.load(f) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(change)
    f.write_bytes(_npz_bytes(**arrays))
    _load_error(run_dir, f)


def test_probe_with_wrong_labels_is_an_error_naming_it(run_dir):
    (run_dir / "probe.npz").write_bytes(_npz_bytes(labels=np.zeros(N + 1, np.int64)))
    _load_error(run_dir, run_dir / "probe.npz")
    (run_dir / "probe.npz").write_bytes(_npz_bytes(labels=np.zeros(N, np.float32)))
    _load_error(run_dir, run_dir / "probe.npz")


class _Payload:
    """Unpickling this touches a marker file: proof that loading ran code from the file."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payload(tmp_path: Path) -> tuple[np.ndarray, Path]:
    marker = tmp_path / "code-was-executed"
    payload = _Payload()
    payload.marker = marker
    obj = np.empty((N, H, W), dtype=object)
    obj[...] = payload
    return obj, marker


@pytest.mark.parametrize("which", ["checkpoint", "prototypes", "probe"])
def test_an_object_array_is_refused_and_never_unpickled(run_dir, tmp_path, which):
    obj, marker = _payload(tmp_path)
    if which == "checkpoint":
        f, arrays = _ckpt(run_dir, 1), {"cams": obj, "confidences": np.zeros((N, M), np.float32)}
    elif which == "probe":
        f, arrays = run_dir / "probe.npz", {"labels": obj[:, 0, 0]}
    else:
        f = _proto_file(run_dir)
        with np.load(f) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["assignment"] = obj
    f.write_bytes(_npz_bytes(**arrays))
    pickle.loads(pickle.dumps(obj[:1, 0, 0]))  # the payload works: unpickling would create the marker
    assert marker.exists()
    marker.unlink()
    _load_error(run_dir, f)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "npy", "npy-object"])
def test_a_checkpoint_that_is_not_an_npz_is_refused(run_dir, tmp_path, kind):
    obj, marker = _payload(tmp_path)
    f = _ckpt(run_dir, 1)
    if kind == "pickle":
        f.write_bytes(pickle.dumps({"cams": obj}))
    else:
        buf = io.BytesIO()
        np.save(buf, obj if kind == "npy-object" else np.zeros((N, H, W), np.float16), allow_pickle=True)
        f.write_bytes(buf.getvalue())
    _load_error(run_dir, f)
    assert not marker.exists()


# -- files the manifest does not list --------------------------------------------------------------
def test_stray_temporary_and_unlisted_files_are_ignored(run_dir):
    before = I2XRun.load(run_dir)
    (run_dir / "checkpoints" / f".ckpt-{NUM_CHECKPOINTS:05d}.npz.tmp-12345").write_bytes(b"PK\x03\x04half a file")
    (run_dir / ".manifest.json.tmp-999").write_bytes(b'{"format": "lightning-i2x-run", "vers')
    (run_dir / "prototypes" / ".proto-00009.npz.tmp-1").write_bytes(b"")
    # a checkpoint written just before a crash, the manifest never updated
    _ckpt(run_dir, NUM_CHECKPOINTS).write_bytes(
        _npz_bytes(cams=np.ones((N, H, W), np.float16), confidences=np.ones((N, M), np.float32))
    )
    _ckpt(run_dir, NUM_CHECKPOINTS + 5).write_bytes(b"garbage")
    (run_dir / "prototypes" / "proto-00000.npz").write_bytes(b"an old prototypes file left behind")
    after = I2XRun.load(run_dir)
    assert after.num_checkpoints == NUM_CHECKPOINTS
    np.testing.assert_array_equal(after.cams(), before.cams())
    np.testing.assert_array_equal(after.confidences(), before.confidences())
    np.testing.assert_array_equal(after.assignment(), before.assignment())
    # the next append overwrites the unlisted checkpoint
    after.append_checkpoint(np.zeros((N, H, W)), np.zeros((N, M)), epoch=5, global_step=50)
    again = I2XRun.load(run_dir)
    assert again.num_checkpoints == NUM_CHECKPOINTS + 1
    np.testing.assert_array_equal(again.cams()[-1], 0.0)


# -- a writer killed at random moments --------------------------------------------------------------
# The writer's data, shared as source with the child: deterministic per checkpoint index, so the
# parent knows what every listed checkpoint must hold.
_DATA_SOURCE = textwrap.dedent(
    """
    import numpy as np

    N, M, H, W, K = 6, 3, 3, 4, 3

    def checkpoint_data(index):
        rng = np.random.default_rng(1000 + index)
        return rng.random((N, H, W)).astype(np.float16), rng.random((N, M)).astype(np.float32)

    def prototype_data(reference):
        rng = np.random.default_rng(5000 + reference)
        arrays = {"projection": rng.random((2, 5)), "bias": rng.random(2), "centroids": rng.random((K, 2)), "inertia": float(reference)}
        return arrays, rng.integers(0, K, (N, H, W))
    """
)
_DATA: dict = {}
exec(_DATA_SOURCE, _DATA)

# One long-lived child imports the package once, then forks a writer per line read from stdin,
# prints the writer's pid, waits for it and prints its wait status. A writer loads the run and
# appends checkpoints until it is killed, replacing the prototypes at every third checkpoint.
_WRITER_SOURCE = _DATA_SOURCE + textwrap.dedent(
    """
    import os, sys, traceback
    from lightning_i2x import I2XRun, Prototypes

    run_dir = sys.argv[1]
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                run = I2XRun.load(run_dir)
                while True:
                    i = run.num_checkpoints
                    cams, conf = checkpoint_data(i)
                    run.append_checkpoint(cams, conf, epoch=i, global_step=10 * i)
                    if i % 3 == 0:
                        arrays, assignment = prototype_data(i)
                        run.set_prototypes(Prototypes(**arrays), assignment, reference=i)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(3)
        print(pid, flush=True)
        print(os.waitpid(pid, 0)[1], flush=True)
    """
)


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    fd, out = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while not out.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 1) if ready else b""
        if not chunk:
            raise AssertionError(f"the writer process stopped answering (exit code {proc.poll()})")
        out += chunk
    return out.decode().strip()


def _check_consistent_prefix(run_dir: Path) -> int:
    run = I2XRun.load(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert run.num_checkpoints == len(manifest["checkpoints"])
    cams, confs = run.cams(), run.confidences()
    for i in range(run.num_checkpoints):
        want_cams, want_conf = _DATA["checkpoint_data"](i)
        np.testing.assert_array_equal(cams[i], want_cams.astype(np.float32))
        np.testing.assert_array_equal(confs[i], want_conf)
        assert run.checkpoints[i] == {"index": i, "epoch": i, "global_step": 10 * i}
    if run.num_checkpoints:
        ref = run.reference
        assert ref is not None and ref % 3 == 0 and ref < run.num_checkpoints
        arrays, assignment = _DATA["prototype_data"](ref)
        for key, value in Prototypes(**arrays).to_arrays().items():
            np.testing.assert_array_equal(run.prototypes.to_arrays()[key], value)
        np.testing.assert_array_equal(run.assignment(), assignment)
    return run.num_checkpoints


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_writer_killed_at_random_moments_leaves_a_consistent_prefix(tmp_path):
    n, m, h, w, k = (_DATA[c] for c in "NMHWK")
    run_dir = tmp_path / "run"
    I2XRun.create(run_dir, labels=np.arange(n) % m, class_names=["a", "b", "c"], feature_shape=(h, w), num_prototypes=k)
    stderr = open(tmp_path / "writer.err", "w+")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER_SOURCE, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, env=env)
    rng = random.Random(20240607)
    counts = [0]
    pid = None  # the writer not yet reaped
    try:
        for trial in range(24):
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            pid = int(_readline(proc, timeout=120))
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still the writer's
            status = int(_readline(proc, timeout=30))
            pid = None
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                stderr.seek(0)
                pytest.fail(f"trial {trial}: the writer stopped by itself (status {status}):\n{stderr.read()}")
            counts.append(_check_consistent_prefix(run_dir))
            assert counts[-1] >= counts[-2], "a listed checkpoint was lost"
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        proc.stdin.close()
        proc.kill()
        proc.wait()
        stderr.close()
    assert counts[-1] > 0, "the writer never got to append"
    expl = I2XRun.load(run_dir).explain()
    json.dumps(expl.to_dict(), allow_nan=False)


def test_truncate_by_the_writer_deletes_what_a_crash_left_unlisted(run_dir):
    (run_dir / "checkpoints" / f".ckpt-{NUM_CHECKPOINTS:05d}.npz.tmp-12345").write_bytes(b"PK\x03\x04half")
    (run_dir / ".manifest.json.tmp-999").write_bytes(b"{")
    _ckpt(run_dir, NUM_CHECKPOINTS + 2).write_bytes(b"garbage")
    (run_dir / "prototypes" / "proto-00000.npz").write_bytes(b"an old prototypes file")
    run = I2XRun.load(run_dir)
    run.truncate(NUM_CHECKPOINTS - 1)
    assert run.manifest["prototypes"] is None  # fitted on a dropped checkpoint
    listed = {run_dir / c["file"] for c in run.manifest["checkpoints"]}
    left = {f for f in run_dir.rglob("*") if f.is_file()} - {run_dir / "manifest.json", run_dir / "probe.npz", run_dir / "probe-images.npy"}
    assert left == listed and len(listed) == NUM_CHECKPOINTS - 1
    again = I2XRun.load(run_dir)
    np.testing.assert_array_equal(again.cams(), run.cams())


def test_two_threads_editing_the_manifest_lose_nothing(run_dir):
    """The training thread records errors while the background analysis records metrics and
    attachments (the callback's two writers): every edit lands, none raises, and the manifest on
    disk is the last complete one. Before the manifest lock and per-thread temporary files, one
    thread's rename took the other's temporary file and failed with FileNotFoundError."""
    import threading

    run, rounds, failures = I2XRun.load(run_dir), 200, []
    start = threading.Barrier(2)

    def errors():
        start.wait()
        for i in range(rounds):
            run.record_error("views", OSError(f"failure {i}"), epoch=i, global_step=i)

    def analysis():
        start.wait()
        for i in range(rounds):
            run.record_metrics({f"m{i % 7}": float(i)}, checkpoint=i % NUM_CHECKPOINTS)
            run.save_attachment(f"a{i % 5}", data={"i": i})

    threads = [threading.Thread(target=lambda f=f: _collect(f, failures)) for f in (errors, analysis)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    again = I2XRun.load(run_dir)
    assert [e["message"] for e in again.errors] == [f"failure {i}" for i in range(rounds)]
    assert again.attachments == [f"a{i}" for i in range(5)]
    assert again.metrics()["m0"][0] == max(i for i in range(rounds) if i % 7 == 0 and i % NUM_CHECKPOINTS == 0)
    assert not list(run_dir.glob(".*.tmp-*"))


def _collect(fn, failures: list) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test reports every failure a thread met
        failures.append(repr(e))
