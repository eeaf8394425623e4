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
