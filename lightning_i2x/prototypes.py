"""Abstract prototypes (Step 1 of the method): PCA + k-means on feature vectors, with FAISS.

The prototypes are plain arrays (a linear projection and K centroids) so they store safely and
reload without FAISS objects; a FAISS index over the centroids does the nearest-prototype search,
on the GPU when faiss-gpu and a CUDA device are there.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import kmeans_plusplus

__all__ = ["Prototypes", "fit_prototypes", "gpu_available"]


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES = None


def _search_index(centroids: np.ndarray, use_gpu: bool | None) -> faiss.Index:
    global _GPU_RESOURCES
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if gpu_available() if use_gpu is None else use_gpu:
        if _GPU_RESOURCES is None:
            _GPU_RESOURCES = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(_GPU_RESOURCES, 0, index)
    return index


@dataclass
class Prototypes:
    """K prototypes: y = x @ projection.T + bias maps a feature vector to the PCA space where the
    centroids live (the identity projection when no reduction was needed)."""

    projection: np.ndarray  # (p, d) float32
    bias: np.ndarray  # (p,) float32
    centroids: np.ndarray  # (K, p) float32
    inertia: float = float("nan")

    def __post_init__(self):
        self.projection = np.ascontiguousarray(self.projection, dtype=np.float32)
        self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        self.centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        self._index = None

    @property
    def num_prototypes(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.projection.shape[1])

    def project(self, features: np.ndarray) -> np.ndarray:
        """(n, d) feature vectors to (n, p) PCA coordinates."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"features must be (n, {self.feature_dim}), got {x.shape}")
        return np.ascontiguousarray(x @ self.projection.T + self.bias, dtype=np.float32)

    def index(self, use_gpu: bool | None = None) -> faiss.Index:
        """The FAISS index over the centroids (built once, GPU when available)."""
        if self._index is None:
            self._index = _search_index(self.centroids, use_gpu)
        return self._index

    def assign(self, features: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """(n,) id of the nearest prototype of each (n, d) feature vector, searched in batches."""
        x = np.asarray(features, dtype=np.float32)
        out = np.empty(x.shape[0], dtype=np.int64)
        for s in range(0, x.shape[0], batch_size):
            _, ids = self.index().search(self.project(x[s : s + batch_size]), 1)
            out[s : s + batch_size] = ids[:, 0]
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"projection": self.projection, "bias": self.bias, "centroids": self.centroids, "inertia": np.float64(self.inertia)}

    @classmethod
    def from_arrays(cls, arrays) -> "Prototypes":
        return cls(arrays["projection"], arrays["bias"], arrays["centroids"], float(arrays["inertia"]))


def fit_prototypes(
    features: np.ndarray,
    num_prototypes: int,
    *,
    n_components: int = 64,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    previous_assignment: np.ndarray | None = None,
    use_gpu: bool | None = None,
    return_distances: bool = False,
) -> tuple[Prototypes, np.ndarray] | tuple[Prototypes, np.ndarray, np.ndarray]:
    """PCA to ``n_components`` (or d if smaller), then FAISS k-means with K clusters from a
    k-means++ start.

    Returns the prototypes and the (n,) assignment of every input vector. With
    ``previous_assignment`` (the ids the same n locations had under the previous prototypes),
    new prototypes take the ids of the old ones they match best (Hungarian matching on centroid
    distance, the old centroids recomputed from the new features of their members so both live
    in one space); old prototypes left with no members are matched last.

    With ``return_distances`` also returns each vector's (n,) float32 squared distance to its
    centroid in the PCA space: galleries show a prototype by its nearest locations.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {x.shape}")
    n, d = x.shape
    if num_prototypes < 1:
        raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}")
    if n < num_prototypes:
        raise ValueError(f"{n} feature vectors cannot make {num_prototypes} prototypes: lower num_prototypes or enlarge the probe set")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf: the model's activations at the target layer are not finite")
    p = min(int(n_components), d, n)
    if p < d:
        pca = faiss.PCAMatrix(d, p)
        pca.train(x)
        projection = faiss.vector_to_array(pca.A).reshape(p, d)
        bias = faiss.vector_to_array(pca.b)
    else:
        projection, bias = np.eye(d, dtype=np.float32), np.zeros(d, dtype=np.float32)
    y = np.ascontiguousarray(x @ projection.T + bias, dtype=np.float32)
    kmeans = faiss.Kmeans(
        p, num_prototypes, niter=niter, seed=seed, verbose=False,
        max_points_per_centroid=max_points_per_centroid, gpu=bool(gpu_available() if use_gpu is None else use_gpu),
    )
    # k-means++ seeding (on a sample) instead of FAISS's uniform random start, which often
    # merges well-separated clusters
    rng = np.random.default_rng(seed)
    sample = y if n <= 64 * num_prototypes else y[rng.choice(n, 64 * num_prototypes, replace=False)]
    init, _ = kmeans_plusplus(sample, num_prototypes, random_state=seed)
    kmeans.train(y, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    protos = Prototypes(projection, bias, kmeans.centroids)
    dist, ids = protos.index(use_gpu).search(y, 1)
    assignment = ids[:, 0].astype(np.int64)
    protos.inertia = float(dist.sum())
    if previous_assignment is not None:
        order = _match_to_previous(y, assignment, np.asarray(previous_assignment).reshape(-1), protos.centroids)
        protos = Prototypes(projection, bias, protos.centroids[order], protos.inertia)
        assignment = np.argsort(order)[assignment]
    if return_distances:
        # FAISS computes |x|^2 + |c|^2 - 2 x.c, which can dip just below 0
        return protos, assignment, np.maximum(dist[:, 0], 0).astype(np.float32)
    return protos, assignment


def _match_to_previous(y: np.ndarray, assignment: np.ndarray, previous: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """order[old_id] = the new cluster that takes that id."""
    k = centroids.shape[0]
    if previous.shape[0] != y.shape[0]:
        raise ValueError("previous_assignment must cover the same feature vectors")
    counts = np.bincount(previous, minlength=k)[:k].astype(np.float64)
    keep = previous < k
    ids, members = previous[keep], y[keep]
    # per-dimension sums by bincount: the same float64 sums as np.add.at, ten times faster
    old = np.stack([np.bincount(ids, weights=members[:, j], minlength=k)[:k] for j in range(y.shape[1])], axis=1)
    old /= np.maximum(counts, 1)[:, None]
    cost = ((old[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    cost[counts == 0] = cost.max() + 1.0  # an emptied old prototype: any leftover cluster
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(k, dtype=np.int64)
    order[rows] = cols
    return order
