"""Abstract prototypes (Step 1 of the method): PCA + k-means on feature vectors, with FAISS.

The prototypes are plain arrays (a linear projection and K centroids) so they store safely and
reload without FAISS objects; a FAISS index over the centroids does the nearest-prototype search,
on the GPU when faiss-gpu and a CUDA device are there.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["Prototypes", "PrototypeStream", "fit_prototypes", "gpu_available"]


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
    return _kmeans(y, projection, bias, num_prototypes, niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid,
                   previous_assignment=previous_assignment, use_gpu=use_gpu, return_distances=return_distances)


def _kmeans(y, projection, bias, num_prototypes, *, niter, seed, max_points_per_centroid, previous_assignment, use_gpu, return_distances):
    """k-means++ start and FAISS k-means on the (n, p) projected vectors ``y``, then the nearest
    prototype of every vector (searched in chunks) and the id matching to the previous assignment."""
    n = y.shape[0]
    init, train = kmeans_sample(n, num_prototypes, seed=seed, max_points_per_centroid=max_points_per_centroid)
    centroids = train_centroids(y if init is None else y[init], y if train is None else y[train], num_prototypes, niter=niter, seed=seed,
                                max_points_per_centroid=max_points_per_centroid, use_gpu=use_gpu)
    protos = Prototypes(projection, bias, centroids)
    dist, assignment = nearest_prototypes(protos, y, use_gpu)
    protos.inertia = float(dist.sum(dtype=np.float64))
    if previous_assignment is not None:
        previous = np.asarray(previous_assignment).reshape(-1)
        if previous.shape[0] != n:
            raise ValueError("previous_assignment must cover the same feature vectors")
        order = match_order(*member_sums(y, previous, num_prototypes), protos.centroids)
        protos = Prototypes(projection, bias, protos.centroids[order], protos.inertia)
        assignment = np.argsort(order)[assignment]
    if return_distances:
        return protos, assignment, np.maximum(dist, 0)
    return protos, assignment


def kmeans_sample(n: int, num_prototypes: int, *, seed: int, max_points_per_centroid: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Which of n vectors the fit reads: the k-means++ start's sample and FAISS's training subsample
    (FAISS's own ``rand_perm`` with the k-means seed, so training on these rows equals FAISS
    subsampling all n itself); None for all n in order. A function of n and the seed only, so
    processes that each hold a share of the vectors agree on it and send only these rows."""
    init = None if n <= 64 * num_prototypes else np.random.default_rng(seed).choice(n, 64 * num_prototypes, replace=False)
    train = None
    if n > num_prototypes * max_points_per_centroid:
        perm = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
        faiss.rand_perm(faiss.swig_ptr(perm), n, seed)
        train = perm[: num_prototypes * max_points_per_centroid].astype(np.int64)
    return init, train


def train_centroids(init_rows: np.ndarray, train_rows: np.ndarray, num_prototypes: int, *, niter: int, seed: int,
                    max_points_per_centroid: int, use_gpu: bool | None) -> np.ndarray:
    """(K, p) centroids: k-means++ seeding on ``init_rows`` (instead of FAISS's uniform random
    start, which often merges well-separated clusters), then FAISS k-means on ``train_rows``."""
    from sklearn.cluster import kmeans_plusplus  # scikit-learn costs ~1 s to import: loaded at the first fit

    p = train_rows.shape[1]
    kmeans = faiss.Kmeans(
        p, num_prototypes, niter=niter, seed=seed, verbose=False,
        max_points_per_centroid=max_points_per_centroid, gpu=bool(gpu_available() if use_gpu is None else use_gpu),
    )
    init, _ = kmeans_plusplus(init_rows, num_prototypes, random_state=seed)
    kmeans.train(np.ascontiguousarray(train_rows, dtype=np.float32), init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    return kmeans.centroids


def nearest_prototypes(protos: Prototypes, y: np.ndarray, use_gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """((n,) float32 squared distance, (n,) int64 id) of each projected vector's nearest centroid,
    searched in chunks so FAISS's (chunk, K) distance block stays bounded. FAISS computes
    |x|^2 + |c|^2 - 2 x.c, which can dip just below 0: the inertia sums these, the distances
    returned with a fit are clipped at 0."""
    n = y.shape[0]
    index = protos.index(use_gpu)
    dist = np.empty(n, dtype=np.float32)
    assignment = np.empty(n, dtype=np.int64)
    for s in range(0, n, _SEARCH_CHUNK):
        d_chunk, ids = index.search(y[s : s + _SEARCH_CHUNK], 1)
        dist[s : s + _SEARCH_CHUNK], assignment[s : s + _SEARCH_CHUNK] = d_chunk[:, 0], ids[:, 0]
    return dist, assignment


_SEARCH_CHUNK = 65536


def member_sums(y: np.ndarray, previous: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, p) float64 sums of the projected vectors ``y`` by their previous id, and (k,) member
    counts: the old prototypes' members seen in the new space. Sums of shares add up to the sums
    of the whole (to float64 rounding)."""
    previous = np.asarray(previous).reshape(-1)
    counts = np.bincount(previous, minlength=k)[:k].astype(np.float64)
    keep = previous < k
    ids, members = previous[keep], y[keep]
    # per-dimension sums by bincount: the same float64 sums as np.add.at, ten times faster
    sums = np.stack([np.bincount(ids, weights=members[:, j], minlength=k)[:k] for j in range(y.shape[1])], axis=1)
    return sums.reshape(k, y.shape[1]).astype(np.float64, copy=False), counts  # float64 also for no members


def match_order(sums: np.ndarray, counts: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """order[old_id] = the new cluster that takes that id: Hungarian matching on the distance
    between each old prototype's members' mean (``member_sums``) and the new centroids."""
    old = sums / np.maximum(counts, 1)[:, None]
    cost = ((old[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    cost[counts == 0] = cost.max() + 1.0  # an emptied old prototype: any leftover cluster
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(centroids.shape[0], dtype=np.int64)
    order[rows] = cols
    return order


class PrototypeStream:
    """Prototypes from activations that arrive batch by batch, never holding them all.

    ``add`` takes each probe batch's (B, d, h, w) activations (torch, on any device) and keeps only
    their projection to a small subspace, on that device, with no host synchronisation: the
    subspace (``n_components + n_oversamples`` directions) is fitted once, by seeded subspace
    iteration on the feature vectors of the first batches (they are buffered raw until at least
    ``sample_locations`` vectors have come, then projected and dropped). ``fit`` then picks the
    ``n_components`` principal axes of ALL the projected vectors inside that subspace (exact PCA
    restricted to it) and runs the same k-means++ start, FAISS k-means and id matching as
    :func:`fit_prototypes`. Vectors are ordered as ``activations.permute(0, 2, 3, 1).reshape(-1, d)``
    batch after batch, as there.

    Memory: the raw buffer (``sample_locations`` x d floats, plus at most one batch) plus n x
    (n_components + n_oversamples) floats, instead of n x d; fitting the subspace adds only
    (rows, k) temporaries. The default 4,096 vectors (32 MiB at d = 2,048) are 51 per subspace
    direction; on ResNet-50 features 1,024 to 8,192 gave the same k-means objective within
    k-means' own seed-to-seed spread. When fewer than ``sample_locations`` vectors arrive in
    all, ``fit`` is exactly :func:`fit_prototypes` on them; when d <= n_components the vectors
    are kept as they are (no reduction), also as there.
    """

    def __init__(
        self,
        num_prototypes: int,
        *,
        n_components: int = 64,
        niter: int = 20,
        seed: int = 0,
        max_points_per_centroid: int = 256,
        sample_locations: int = 4096,
        n_oversamples: int = 16,
        iterated_power: int = 6,
        use_gpu: bool | None = None,
    ):
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}")
        if n_components < 1 or n_oversamples < 0 or iterated_power < 0:
            raise ValueError("n_components must be >= 1, n_oversamples and iterated_power >= 0")
        if sample_locations < n_components + n_oversamples:
            raise ValueError(f"sample_locations ({sample_locations}) must be at least n_components + n_oversamples ({n_components + n_oversamples})")
        self.num_prototypes, self.n_components, self.niter, self.seed = int(num_prototypes), int(n_components), int(niter), int(seed)
        self.max_points_per_centroid, self.sample_locations = int(max_points_per_centroid), int(sample_locations)
        self.n_oversamples, self.iterated_power, self.use_gpu = int(n_oversamples), int(iterated_power), use_gpu
        self._dim: int | None = None
        self._pending: list[torch.Tensor] = []  # raw (m, d) rows until the subspace is fitted
        self._pending_rows = 0
        self._kept: list[torch.Tensor] = []  # (m, k) projected rows (or raw rows when d <= n_components)
        self._basis: torch.Tensor | None = None  # (d, k) orthonormal columns
        self._mean: torch.Tensor | None = None  # (d,) mean of the sample
        self.num_vectors = 0  # feature vectors (locations) added since the last fit

    # -- streaming ---------------------------------------------------------------------------------
    def add(self, activations) -> None:
        """Take one batch of (B, d, h, w) activations; keeps (B*h*w, k) projected rows on their device."""
        x = torch.as_tensor(activations).detach()
        if x.ndim != 4:
            raise ValueError(f"activations must be (B, d, h, w), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"activations must be floating point, got {x.dtype}")
        d = int(x.shape[1])
        if self._dim is None:
            self._dim = d
        elif d != self._dim:
            raise ValueError(f"activations have {d} channels, earlier batches had {self._dim}")
        rows = x.shape[0] * x.shape[2] * x.shape[3]
        if rows == 0:
            return
        self.num_vectors += rows
        if d <= self.n_components:  # no reduction, as fit_prototypes
            self._kept.append(_rows(x))
        elif self._basis is None:
            self._pending.append(_rows(x))
            self._pending_rows += rows
            if self._pending_rows >= self.sample_locations:
                self._fit_subspace()
        else:
            self._kept.append(self._project(x))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) -> (B*h*w, k) rows of (x - mean) @ basis, without a (B*h*w, d) copy."""
        b, d, h, w = x.shape
        z = torch.matmul(self._basis.T, x.reshape(b, d, h * w).float())  # (B, k, hw)
        return (z.transpose(1, 2).reshape(b * h * w, -1) - self._mean @ self._basis).contiguous()

    def _fit_subspace(self) -> None:
        """Orthonormal basis of the top principal subspace of the buffered rows (all of them: at
        least ``sample_locations``, at most one batch more): subspace iteration with QR (matrix
        products only; no eigen-solver, whose error check would synchronise with the host), then
        project the buffer and drop it batch by batch.

        The products run over the buffered batches one at a time, with no concatenated or centred
        copy: the mean m comes out algebraically, (X - 1 m^T)^T (X - 1 m^T) q = sum_b X_b^T Z_b
        - m (1^T Z) with Z_b = X_b q - 1 (m^T q), so the only temporaries are (rows, k) blocks."""
        pending = self._pending
        device = pending[0].device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        n = sum(r.shape[0] for r in pending)
        mean = (sum(r.sum(dim=0, dtype=torch.float64) for r in pending) / n).float()
        k = min(self.n_components + self.n_oversamples, self._dim)
        q = torch.randn(self._dim, k, generator=generator, device=device)
        for _ in range(self.iterated_power + 1):
            q = torch.linalg.qr(_centred_gram_times(pending, mean, q)).Q
        self._basis, self._mean = q.contiguous(), mean  # one memory layout, whichever process projects with it
        shift = mean @ q
        while pending:  # project and drop: the raw rows are never held twice
            self._kept.append(pending.pop(0) @ q - shift)
        self._pending_rows = 0

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, previous_assignment: np.ndarray | None = None):
        """(Prototypes, (n,) assignment, (n,) squared distances to the own centroid in the PCA
        space): the contract of ``fit_prototypes(..., return_distances=True)``. Empties the stream."""
        if self._dim is None or self.num_vectors == 0:
            raise ValueError("no activations were added: call add() with each probe batch first")
        common = dict(niter=self.niter, seed=self.seed, max_points_per_centroid=self.max_points_per_centroid,
                      previous_assignment=previous_assignment, use_gpu=self.use_gpu, return_distances=True)
        if self._pending:  # fewer vectors than the PCA sample: the exact computation
            rows = np.empty((self.num_vectors, self._dim), dtype=np.float32)
            s = 0
            while self._pending:  # filled batch by batch, so the rows are held about once
                r = self._pending.pop(0).cpu().numpy()
                rows[s : s + r.shape[0]] = r
                s += r.shape[0]
            self._reset()
            return fit_prototypes(rows, self.num_prototypes, n_components=self.n_components, **common)
        n = self.num_vectors
        if n < self.num_prototypes:
            raise ValueError(f"{n} feature vectors cannot make {self.num_prototypes} prototypes: lower num_prototypes or enlarge the probe set")
        if self._basis is None:  # d <= n_components: the vectors themselves
            d = self._dim
            y = self.rotated()
            _check_finite(y)
            return _kmeans(y, np.eye(d, dtype=np.float32), np.zeros(d, dtype=np.float32), self.num_prototypes, **common)
        n_seen, total, second = self.moments()
        zbar, v, projection, bias = self.rotation(n_seen, total, second)
        return _kmeans(self.rotated(zbar, v), projection, bias, self.num_prototypes, **common)

    # -- the pieces of ``fit``, for processes that each stream a share of the probe ----------------
    @property
    def subspace(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(basis (d, k), mean (d,)) once fitted; None before (or when d <= n_components)."""
        return None if self._basis is None else (self._basis, self._mean)

    def set_subspace(self, basis: torch.Tensor, mean: torch.Tensor) -> None:
        """Project what is added from now on with a subspace fitted elsewhere (another process's
        stream over the first batches of the same probe). Only on an empty stream."""
        if self.num_vectors or self._dim is not None:
            raise ValueError("set_subspace needs an empty stream: it was given activations already")
        self._dim, self._basis, self._mean = int(basis.shape[0]), basis.contiguous(), mean.contiguous()

    def moments(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, (k,) sum, (k, k) sum of outer products) of the kept rows, float64: what the PCA
        inside the subspace needs; ``batch_moments`` added in batch order from zero."""
        k = self._moment_dim()
        total, second = np.zeros(k), np.zeros((k, k))
        for z in self._kept:  # as it goes: no (batches, k, k) array in one process
            z64 = z.double()
            total += z64.sum(0).cpu().numpy()
            second += (z64.T @ z64).cpu().numpy()
        return self.num_vectors, total, second

    def batch_moments(self) -> np.ndarray:
        """(batches, 1 + k + k * k) float64: each kept batch's rows, sum and sum of outer products.
        Processes whose shares are whole batches of one probe pass send these, and their sum in
        batch order is the one process's to the bit."""
        k = self._moment_dim()
        out = np.empty((len(self._kept), 1 + k + k * k))
        for i, z in enumerate(self._kept):
            z64 = z.double()
            out[i, 0], out[i, 1 : 1 + k], out[i, 1 + k :] = z.shape[0], z64.sum(0).cpu().numpy(), (z64.T @ z64).cpu().numpy().reshape(-1)
        return out

    def _moment_dim(self) -> int:
        if self._pending:
            raise ValueError("the subspace is not fitted yet: fewer vectors than sample_locations were added")
        return self._dim if self._basis is None else self._basis.shape[1]

    def rotation(self, n: int, total: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(zbar, v, projection, bias): the exact PCA of every projected vector inside the subspace
        from its moments (``moments``), the PCA axes v (k, p) and the (p, d) projection with its
        bias that map a feature vector to them. Raises ValueError for non-finite moments."""
        zbar = total / n
        cov = second / n - np.outer(zbar, zbar)
        if not np.all(np.isfinite(cov)):
            raise ValueError("features contain NaN or inf: the model's activations at the target layer are not finite")
        p = min(self.n_components, cov.shape[0])
        evals, evecs = np.linalg.eigh(cov)
        v = evecs[:, ::-1][:, :p]  # descending variance, as a PCA
        basis, mean = self._basis.double().cpu().numpy(), self._mean.double().cpu().numpy()
        projection = (basis @ v).T.astype(np.float32)  # (p, d)
        bias = (-(mean @ basis + zbar) @ v).astype(np.float32)
        return zbar, v, projection, bias

    def rotated(self, zbar: np.ndarray | None = None, v: np.ndarray | None = None) -> np.ndarray:
        """The kept rows as (n, p) float32 on the PCA axes (``rotation``; as they are without
        ``v``), draining the stream."""
        y = np.empty((self.num_vectors, self._dim if v is None else v.shape[1]), dtype=np.float32)
        self._drain_into(y, None if v is None else (zbar, v))
        return y

    def _drain_into(self, y: np.ndarray, rotation) -> None:
        """Write every kept batch (rotated to the final PCA axes) into ``y`` and drop it as it goes,
        so the host holds the kept rows about once."""
        s = 0
        while self._kept:
            z = self._kept.pop(0).cpu().numpy()
            if rotation is not None:
                zbar, v = rotation
                z = (z - zbar) @ v
            y[s : s + z.shape[0]] = z
            s += z.shape[0]
        self._reset()

    def _reset(self) -> None:
        """Empty the stream: ``fit`` consumes what was added, the next record starts afresh."""
        self._dim, self._basis, self._mean = None, None, None
        self._pending, self._pending_rows, self._kept = [], 0, []
        self.num_vectors = 0


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) -> (B*h*w, d) float32 rows in fit_prototypes' order."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).float()


def _centred_gram_times(batches: list[torch.Tensor], mean: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(X - 1 m^T)^T (X - 1 m^T) q for X the row-wise concatenation of ``batches``, without
    forming X or its centred copy (see ``PrototypeStream._fit_subspace``)."""
    shift = mean @ q  # (k,)
    out = torch.zeros_like(q)
    colsum = torch.zeros_like(shift)
    for r in batches:
        z = r @ q - shift  # (rows, k): the centred projection of this batch
        out.addmm_(r.T, z)
        colsum += z.sum(dim=0)
    return out - torch.outer(mean, colsum)


def _check_finite(y: np.ndarray) -> None:
    if not np.all(np.isfinite(y)):
        raise ValueError("features contain NaN or inf: the model's activations at the target layer are not finite")
