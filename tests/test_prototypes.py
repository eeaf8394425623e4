"""Prototype fitting: planted clusters recovered, ids stable across refits, FAISS search exact."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from lightning_i2x.prototypes import Prototypes, fit_prototypes


def _blobs(n_per=300, k=6, d=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, d))
    labels = np.repeat(np.arange(k), n_per)
    return (centres[labels] + rng.normal(size=(len(labels), d))).astype(np.float32), labels


def test_recovers_planted_clusters_through_pca():
    x, truth = _blobs()
    protos, assignment = fit_prototypes(x, 6, n_components=8, seed=0)
    assert protos.projection.shape == (8, 40) and protos.centroids.shape == (6, 8)
    assert adjusted_rand_score(truth, assignment) == 1.0


def test_no_reduction_when_dimension_is_small():
    x, _ = _blobs(d=5)
    protos, _ = fit_prototypes(x, 6, n_components=64)
    np.testing.assert_array_equal(protos.projection, np.eye(5))


def test_assign_is_exact_nearest_centroid():
    x, _ = _blobs(seed=1)
    protos, assignment = fit_prototypes(x, 6, n_components=8)
    y = protos.project(x)
    brute = ((y[:, None, :] - protos.centroids[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(protos.assign(x, batch_size=97), brute)
    np.testing.assert_array_equal(assignment, brute)


def test_ids_stay_stable_across_refits():
    x, _ = _blobs(seed=2)
    _, first = fit_prototypes(x, 6, seed=0)
    _, unmatched = fit_prototypes(x + 0.05, 6, seed=7)
    _, matched = fit_prototypes(x + 0.05, 6, seed=7, previous_assignment=first)
    assert adjusted_rand_score(first, unmatched) == 1.0  # same partition ...
    np.testing.assert_array_equal(matched, first)  # ... and, matched, the same ids


def test_round_trip_through_arrays():
    x, _ = _blobs(seed=3)
    protos, assignment = fit_prototypes(x, 6, n_components=8)
    again = Prototypes.from_arrays(protos.to_arrays())
    np.testing.assert_array_equal(again.assign(x), assignment)


def test_clear_errors():
    x, _ = _blobs(n_per=1, k=3)
    with pytest.raises(ValueError, match="cannot make 5 prototypes"):
        fit_prototypes(x, 5)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        fit_prototypes(x, 2)


# -- streaming ------------------------------------------------------------------------------------

import torch  # noqa: E402

from lightning_i2x.prototypes import PrototypeStream  # noqa: E402


def _as_batches(x, h=4, w=4, batch=16):
    """(n, d) vectors as (B, d, h, w) activation batches, in fit_prototypes' row order."""
    maps = torch.from_numpy(x).reshape(-1, h, w, x.shape[1]).permute(0, 3, 1, 2)
    return [maps[s : s + batch] for s in range(0, maps.shape[0], batch)]


def _partition_inertia(y, labels):
    """Sum of squared distances to the own cluster mean: the k-means objective of a partition."""
    return sum(((y[labels == c] - y[labels == c].mean(0)) ** 2).sum() for c in np.unique(labels))


def _activation_like(n, d=256, k=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, 24))
    mix = rng.normal(size=(24, d)) / np.sqrt(24)
    labels = rng.integers(0, k, n)
    x = np.maximum((centres[labels] + rng.normal(size=(n, 24))) @ mix, 0) + 0.05 * rng.normal(size=(n, d))
    return x.astype(np.float32), labels


def test_stream_recovers_planted_clusters_and_matches_full_inertia():
    x, truth = _activation_like(16 * 16 * 40)  # 640 images' worth of 4x4 maps, d = 256
    stream = PrototypeStream(8, n_components=16, sample_locations=1024, seed=0)
    for b in _as_batches(x):
        stream.add(b)
    assert stream._pending == [] and stream._kept[0].shape[1] == 16 + 16  # only projected rows kept
    protos, assignment, distances = stream.fit()
    full, full_assignment = fit_prototypes(x, 8, n_components=16, seed=0)
    assert adjusted_rand_score(truth, assignment) == 1.0
    assert adjusted_rand_score(full_assignment, assignment) == 1.0
    y_full = full.project(x).astype(np.float64)  # both partitions scored in the full PCA space
    ratio = _partition_inertia(y_full, assignment) / _partition_inertia(y_full, full_assignment)
    assert ratio <= 1.02
    # the returned projection reproduces the vectors k-means saw: assignment and distances exact
    y = protos.project(x)
    brute = ((y[:, None, :] - protos.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assignment, brute.argmin(1))
    np.testing.assert_allclose(distances, brute.min(1), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(protos.assign(x), assignment)
    # PCA axes: orthonormal rows, descending variance
    np.testing.assert_allclose(protos.projection @ protos.projection.T, np.eye(16), atol=1e-5)
    assert np.all(np.diff(y.var(0)) <= 1e-3)


def test_stream_below_the_sample_is_the_exact_computation():
    x, _ = _blobs(n_per=40, k=6, d=40, seed=4)  # 240 vectors < sample_locations
    stream = PrototypeStream(6, n_components=8, sample_locations=1000)
    for b in _as_batches(x[:240], h=2, w=2, batch=7):
        stream.add(b)
    got = stream.fit()
    want = fit_prototypes(x[:240], 6, n_components=8, return_distances=True)
    for a, b in zip((got[0].projection, got[0].centroids, got[1], got[2]), (want[0].projection, want[0].centroids, want[1], want[2])):
        np.testing.assert_array_equal(a, b)


def test_stream_without_reduction_when_dimension_is_small():
    x, truth = _blobs(n_per=64, d=5)
    stream = PrototypeStream(6, n_components=64, sample_locations=128)
    for b in _as_batches(x, h=2, w=2, batch=8):
        stream.add(b)
    protos, assignment, _ = stream.fit()
    np.testing.assert_array_equal(protos.projection, np.eye(5))
    assert adjusted_rand_score(truth, assignment) == 1.0


def test_stream_ids_stay_stable_across_refits_and_stream_is_reusable():
    x, _ = _activation_like(16 * 16 * 20, k=6, seed=5)
    stream = PrototypeStream(6, n_components=16, sample_locations=512, seed=0)
    for b in _as_batches(x):
        stream.add(b)
    _, first, _ = stream.fit()
    assert stream.num_vectors == 0  # fit empties it
    stream.seed = 7
    for b in _as_batches(x + 0.01):
        stream.add(b)
    _, matched, _ = stream.fit(previous_assignment=first)
    assert adjusted_rand_score(first, matched) > 0.99
    assert (matched == first).mean() > 0.99


def test_stream_keeps_the_batches_device_and_dtype_agnostic():
    x, truth = _activation_like(16 * 16 * 20, seed=6)
    stream = PrototypeStream(8, n_components=16, sample_locations=512)
    for b in _as_batches(x):
        stream.add(b.to(torch.bfloat16))
    _, assignment, _ = stream.fit()
    assert adjusted_rand_score(truth, assignment) > 0.95


def test_stream_clear_errors():
    stream = PrototypeStream(3, n_components=4, n_oversamples=2, sample_locations=16)
    with pytest.raises(ValueError, match="no activations"):
        stream.fit()
    with pytest.raises(ValueError, match=r"\(B, d, h, w\)"):
        stream.add(torch.zeros(2, 8, 3))
    stream.add(torch.zeros(2, 8, 3, 3))
    with pytest.raises(ValueError, match="earlier batches had 8"):
        stream.add(torch.zeros(2, 9, 3, 3))
    stream.add(torch.full((2, 8, 3, 3), float("nan")))
    with pytest.raises(ValueError, match="not finite"):
        stream.fit()
    with pytest.raises(ValueError, match="sample_locations"):
        PrototypeStream(3, n_components=64, sample_locations=10)


def test_stream_subspace_products_equal_the_centred_computation():
    """The batch-by-batch product with the mean taken out algebraically equals the centred Gram
    product of the concatenated rows, also when the mean dwarfs the spread (ReLU-like features)."""
    from lightning_i2x.prototypes import _centred_gram_times

    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(m, 48, generator=g, dtype=torch.float64) * 0.1 + 5.0 for m in (30, 7, 64, 1)]
    q = torch.randn(48, 6, generator=g, dtype=torch.float64)
    x = torch.cat(batches)
    mean = x.mean(0)
    want = (x - mean).T @ ((x - mean) @ q)
    torch.testing.assert_close(_centred_gram_times(batches, mean, q), want, rtol=1e-10, atol=1e-10)
    got32 = _centred_gram_times([b.float() for b in batches], mean.float(), q.float())
    torch.testing.assert_close(got32.double(), want, rtol=1e-3, atol=1e-3 * want.abs().max().item())


def test_stream_fits_the_subspace_on_every_buffered_row_without_copies():
    """The subspace is fitted on the first batches (all their rows, >= sample_locations), the raw
    buffer is dropped right after and the kept rows equal (x - mean) @ basis."""
    x, _ = _activation_like(16 * 16 * 10, seed=3)
    batches = _as_batches(x)  # 16 images x 16 locations = 256 rows a batch
    stream = PrototypeStream(8, n_components=16, sample_locations=600, seed=0)
    for b in batches[:2]:
        stream.add(b)
    assert stream._basis is None and stream._pending_rows == 512
    stream.add(batches[2])  # 768 >= 600: fitted on all 768 rows
    assert stream._pending == [] and len(stream._kept) == 3
    first = torch.from_numpy(x[:768])
    torch.testing.assert_close(stream._mean, first.mean(0), rtol=1e-5, atol=1e-5)
    q = stream._basis
    torch.testing.assert_close(q.T @ q, torch.eye(q.shape[1]), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat(stream._kept), (first - first.mean(0)) @ q, rtol=1e-4, atol=1e-4)
