"""The distributed record (``record.distributed_probe_pass``) against one process, without a
Trainer: each rank runs in a thread against a fake all_gather / broadcast (barriers), on planted
clustered features, and the run rank 0 writes must equal the one-process run of the same
features: same prototypes, assignment, maps, confidences and pooled features, over two records
(the second matches ids to the first)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from lightning_i2x.options import PrototypeOptions
from lightning_i2x.record import Group, ProbeEvidence, Recorder, distributed_probe_pass, head_images, open_run
from lightning_i2x.saliency import TargetLayer

K, BATCH = 8, 32


class FakeGroup:
    """``world`` ranks in threads: all_gather stacks what every rank sent (a shape mismatch
    raises), broadcast hands every rank rank 0's tensor; every call is logged per rank."""

    def __init__(self, world: int):
        self.world, self.slots = world, [None] * world
        self.barrier = threading.Barrier(world, timeout=120)
        self.calls: list[list[tuple]] = [[] for _ in range(world)]
        self.received = [0] * world

    def _exchange(self, rank: int, kind: str, t: torch.Tensor, pick) -> torch.Tensor:
        self.calls[rank].append((kind, tuple(t.shape), t.dtype))
        self.slots[rank] = t.clone()
        self.barrier.wait()
        out = pick()
        self.barrier.wait()
        self.received[rank] += out.numel() * out.element_size()
        return out

    def group(self, rank: int) -> Group:
        return Group(rank, self.world, lambda t: self._exchange(rank, "all_gather", t, lambda: torch.stack(self.slots)),
                     lambda t: self._exchange(rank, "broadcast", t, lambda: self.slots[0].clone()))


def planted(n: int, d: int, hw: int, seed: int) -> torch.Tensor:
    """(n, d, s, s) features: each location one of K planted centres plus noise of a distinct
    scale per channel, so the PCA spectrum has no ties (inside a tie the axes are arbitrary: a
    rounding difference may turn them, in one process too under another BLAS)."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(K, d, generator=g)
    labels = torch.randint(0, K, (n * hw,), generator=g)
    rows = centres[labels] + torch.randn(n * hw, d, generator=g) * torch.linspace(0.05, 0.8, d)
    s = int(hw**0.5)
    return rows.reshape(n, s, s, d).permute(0, 3, 1, 2).contiguous()


def fake_pass(features: torch.Tensor, fail: bool = False):
    """A probe pass over given features ("images" are the features): maps, confidences and pooled
    features from them, batch by batch into the stream as ``probe_pass`` does."""

    def run_pass(images, labels, *, stream):
        if fail:
            raise RuntimeError("injected")
        cams, confs, pooled, acts = [], [], [], []
        for s in range(0, images.shape[0], BATCH):
            x = images[s : s + BATCH]
            cams.append(x.mean(1))
            confs.append(torch.softmax(x.mean((2, 3))[:, :5], 1))
            pooled.append(x.mean((2, 3)))
            stream.add(x) if stream is not None else acts.append(x)
        return ProbeEvidence(None if stream is not None else torch.cat(acts), torch.cat(cams), torch.cat(confs), stream, pooled=torch.cat(pooled))

    return run_pass


def _guard(errors):
    def guard(where, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - the test inspects what was reported
            errors.append((where, e))
            return None

    return guard


def _records(tmp_path, name, features_per_record, world, failing=()):
    """The runs rank 0 writes over the records, the groups' call logs and what was reported."""
    n, d, h, w = features_per_record[0].shape
    layer = TargetLayer("x", nn.Identity(), (d, h, w), 5)
    labels = torch.arange(n) % 5
    run = open_run(tmp_path / name, features_per_record[0], labels, [str(c) for c in range(5)], layer, num_prototypes=K, store_images=False)
    recorder = Recorder(K, PrototypeOptions(pca_components=16))
    logs, errors = [], []
    for epoch, features in enumerate(features_per_record):
        if world == 0:  # one process: the callback's own path
            evidence = fake_pass(features)(features, labels, stream=recorder.new_stream())
        else:
            fake, out = FakeGroup(world), [None] * world

            def rank_main(r, fake=fake, out=out, features=features):
                previous = lambda: None if run.prototypes is None else run.assignment().reshape(-1)  # noqa: E731
                out[r] = distributed_probe_pass(fake.group(r), fake_pass(features, fail=r in failing), _guard(errors), features, labels,
                                                recorder if r == 0 else Recorder(K, PrototypeOptions(pca_components=16)), layer,
                                                batch_size=BATCH, previous=previous)

            threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all(o is None for o in out[1:])
            logs.append(fake)
            evidence = out[0]
        if evidence is not None:
            recorder.append(run, evidence, epoch=epoch, global_step=epoch)
    return run, logs, errors


def _assert_same_run(a, b):
    """To the bit: every rank's batches are one process's, the batch moments are added in the same
    order, the k-means reads the same rows. Two things are not bitwise: FAISS's search computes
    |y|^2 + |c|^2 - 2 y.c with BLAS over blocks of queries, and each rank searches its own rows,
    so distances (and the inertia, their sum) differ in the last float32 bits; the member sums of
    the id matching are added rank by rank, which could change the permutation only at a tie."""
    assert a.num_checkpoints == b.num_checkpoints == 2
    np.testing.assert_array_equal(a.assignment(), b.assignment())
    np.testing.assert_array_equal(a.cams(), b.cams())
    np.testing.assert_array_equal(a.confidences(), b.confidences())
    np.testing.assert_array_equal(a.pooled_features(), b.pooled_features())
    pa, pb = a.prototypes, b.prototypes
    for x, y in ((pa.projection, pb.projection), (pa.bias, pb.bias), (pa.centroids, pb.centroids)):
        np.testing.assert_array_equal(x, y)
    assert a.reference == b.reference
    # the expansion cancels: its float32 error is about eps x |y|^2, |y| about a centroid's norm
    scale = float((pb.centroids.astype(np.float64) ** 2).sum(1).max())
    np.testing.assert_allclose(a.distances(), b.distances(), rtol=0, atol=64 * np.finfo(np.float32).eps * scale)
    np.testing.assert_allclose(pa.inertia, pb.inertia, rtol=1e-5)


@pytest.mark.parametrize("n, d, hw, world", [
    (300, 96, 16, 2),   # the head (256 images) spans both shares
    (300, 96, 16, 3),   # rank 1's share lies inside the head: it sends nothing but takes part
    (1001, 96, 16, 3),  # uneven shares, FAISS's training subsample and the k-means++ sample in use
    (700, 24, 9, 2),    # d <= n_components: no subspace, no head
    (100, 96, 16, 3),   # N x h x w < sample_locations: the whole activations are gathered
    (400, 96, 16, 1),
])
def test_distributed_record_equals_one_process(tmp_path, n, d, hw, world):
    records = [planted(n, d, hw, seed=0), planted(n, d, hw, seed=0) * 1.05 + 0.01]
    single, _, _ = _records(tmp_path, "single", records, world=0)
    ddp, logs, errors = _records(tmp_path, "ddp", records, world=world)
    assert not errors
    _assert_same_run(ddp, single)
    for fake in logs:  # every rank the same collectives with the same shapes, in the same order
        assert all(c == fake.calls[0] for c in fake.calls)
    if n * hw >= 4096 and world > 1:  # less than the whole gather received: activations, maps, confidences
        whole = world * (-(-n // world)) * (d * hw + hw + 5) * 4
        assert max(fake.received) < whole, (max(fake.received), whole)


def test_head_images_is_where_one_process_fits_its_subspace():
    stream = Recorder(K).new_stream()
    assert head_images(10_000, 49, 2048, stream, 64) == 128  # ceil(4096 / 49) = 84 images -> two batches of 64
    assert head_images(100, 49, 2048, stream, 64) == 100
    assert head_images(10_000, 49, 32, stream, 64) == 0  # d <= n_components: nothing to fit
    one = Recorder(K).new_stream()
    x = planted(128, 96, 49, seed=1)
    for s in range(0, 64, 64):
        one.add(x[s : s + 64])
    assert one.subspace is None
    one.add(x[64:128])
    assert one.subspace is not None


@pytest.mark.parametrize("failing", [{1}, {0}])
def test_a_failed_rank_stops_every_rank_after_the_same_collectives(tmp_path, failing):
    features = planted(600, 96, 16, seed=2)
    run, logs, errors = _records(tmp_path, "ddp", [features], world=3, failing=failing)
    assert run.num_checkpoints == 0
    assert all(c == logs[0].calls[0] for c in logs[0].calls)
    wheres = [(w, str(e)) for w, e in errors]
    assert ("probe pass", "injected") in wheres
    if 0 not in failing:
        assert ("probe pass", "the probe pass failed on rank(s) [1]") in wheres


def test_the_distributed_fit_refuses_a_run_whose_assignment_changed_meanwhile(tmp_path):
    """The ids were matched to the assignment rank 0 read; appending to a run that holds another
    one would store ids matched to the wrong record."""
    features = planted(600, 96, 16, seed=3)
    run, _, _ = _records(tmp_path, "ddp", [features], world=2)
    fake, out = FakeGroup(2), [None, None]
    layer = TargetLayer("x", nn.Identity(), (96, 4, 4), 5)

    def rank_main(r):
        out[r] = distributed_probe_pass(fake.group(r), fake_pass(features), _guard([]), features, torch.arange(600) % 5,
                                        Recorder(K, PrototypeOptions(pca_components=16)), layer, batch_size=BATCH, previous=lambda: None)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(ValueError, match="prototypes changed between the distributed fit and this record"):
        Recorder(K, PrototypeOptions(pca_components=16)).append(run, out[0], epoch=1, global_step=1)
