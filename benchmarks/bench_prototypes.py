"""Prototype fitting: lightning_i2x.prototypes.fit_prototypes (FAISS PCA + k-means) against
scikit-learn PCA + KMeans on the same vectors.

    python benchmarks/bench_prototypes.py [--quick] [--out FILE] [--repeats R] [--n N]

  faiss    fit_prototypes(x, K, n_components=64, niter=20, seed=0): FAISS PCA on all vectors, a
           k-means++ start, FAISS k-means (on at most 256 vectors per centroid, FAISS's default
           sample), then the nearest-prototype assignment of every vector
  sklearn  PCA(64).fit_transform(x), then KMeans(K, n_init=1, max_iter=20) on every vector
           (k-means++ start, scikit-learn's default tolerance, so it may stop before 20 iterations)

The vectors are synthetic activation-like features (256 Gaussian clusters in a 48-d latent space,
a random linear map to 512-d, ReLU, small noise). Quality: the inertia (sum of squared distances
to the nearest centroid) of both over ALL vectors in one PCA space, FAISS's; scikit-learn's
centroids are lifted back to 512-d (components, mean) and projected there.

Last line: sklearn_vs_faiss_time (median sklearn time / median faiss time) and
faiss_vs_sklearn_inertia (faiss inertia / sklearn inertia; below 1 means FAISS fits better).
"""

from __future__ import annotations

import sys
import time

import faiss
import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from lightning_i2x.prototypes import fit_prototypes

import _common

DIM, LATENT, TRUE_CLUSTERS, COMPONENTS, NITER = 512, 48, 256, 64, 20


def make_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((TRUE_CLUSTERS, LATENT), dtype=np.float32)
    mix = rng.standard_normal((LATENT, DIM), dtype=np.float32) / np.sqrt(LATENT)
    x = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 65536):  # in chunks: bounded temporaries
        m = min(65536, n - s)
        z = centres[rng.integers(0, TRUE_CLUSTERS, m)] + rng.standard_normal((m, LATENT), dtype=np.float32)
        x[s : s + m] = np.maximum(z @ mix, 0.0) + 0.1 * rng.standard_normal((m, DIM), dtype=np.float32)
    return x


def inertia(y: np.ndarray, centroids: np.ndarray) -> float:
    index = faiss.IndexFlatL2(y.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, _ = index.search(y, 1)
    return float(dist.astype(np.float64).sum())


def main(argv=None) -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--n", type=int, default=None, help="number of vectors (default 500000; --quick: 20000)")
    ap.add_argument("--k", type=int, default=128, help="number of prototypes K")
    args = ap.parse_args(argv)
    info = _common.machine()
    info["faiss"] = f"{faiss.__version__} ({faiss.omp_get_max_threads()} OpenMP threads)"
    import sklearn

    info["scikit-learn"] = sklearn.__version__
    n = args.n or (20_000 if args.quick else 500_000)
    k = args.k
    repeats = args.repeats or (1 if args.quick else 5)
    t0 = time.perf_counter()
    x = make_vectors(n)
    print(f"{n} x {DIM} vectors made in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    last: dict[str, object] = {}

    def run_faiss(data=x):
        last["faiss"] = fit_prototypes(data, k, n_components=COMPONENTS, niter=NITER, seed=0)

    def run_sklearn(data=x):
        pca = PCA(COMPONENTS, random_state=0)
        y = pca.fit_transform(data)
        km = KMeans(k, n_init=1, max_iter=NITER, random_state=0).fit(y)
        last["sklearn"] = (pca, km)

    # warm-up on a small slice (loads code paths and thread pools without a second full fit)
    warm = x[: min(n, 20_000)]
    run_faiss(warm)
    run_sklearn(warm)
    times = _common.interleaved({"faiss": run_faiss, "sklearn": run_sklearn}, repeats, warmup=0)
    med = {name: _common.median(v) for name, v in times.items()}

    protos, _ = last["faiss"]
    pca, km = last["sklearn"]
    y = protos.project(x)
    faiss_inertia = protos.inertia
    lifted = (km.cluster_centers_.astype(np.float64) @ pca.components_ + pca.mean_).astype(np.float32)
    sklearn_inertia = inertia(y, protos.project(lifted))
    time_ratio = med["sklearn"] / med["faiss"]
    inertia_ratio = faiss_inertia / sklearn_inertia

    header = ["method", "median time", "min-max", "k-means iterations", "inertia, all vectors, FAISS PCA space", "inertia / sklearn's"]
    rows = [
        ["lightning_i2x fit_prototypes (FAISS)", _common.fmt_s(med["faiss"]), _common.spread(times["faiss"]), NITER,
         f"{faiss_inertia:.6g}", f"{inertia_ratio:.4f}"],
        ["scikit-learn PCA + KMeans", _common.fmt_s(med["sklearn"]), _common.spread(times["sklearn"]), km.n_iter_,
         f"{sklearn_inertia:.6g} (own PCA space: {km.inertia_:.6g})", "1"],
    ]
    scaled = "" if n >= 500_000 or args.quick else f" (scaled down from the 500000 target: {n})"
    body = "\n".join([
        f"N = {n} vectors{scaled} of dimension {DIM}, PCA to {COMPONENTS}, K = {k}, {NITER} k-means iterations at most, "
        f"seed 0. Median of {repeats} interleaved rounds after a warm-up on {warm.shape[0]} vectors.",
        "",
        _common.table(header, rows),
        "",
        f"- sklearn / faiss time: {time_ratio:.2f}; faiss / sklearn inertia: {inertia_ratio:.4f}.",
        "- Vectors: synthetic activation-like features (256 Gaussian clusters in a 48-d latent space, random linear "
        "map to 512-d, ReLU, noise 0.1).",
        "- FAISS trains k-means on a sample of at most 256 vectors per centroid (FAISS's default) and assigns every "
        "vector after; scikit-learn iterates on all vectors. Both inertias are over all vectors.",
    ])
    _common.report(
        "Prototype fitting: FAISS (fit_prototypes) vs scikit-learn",
        body,
        {"sklearn_vs_faiss_time": time_ratio, "faiss_vs_sklearn_inertia": inertia_ratio},
        args.out, info, args.quick,
    )


if __name__ == "__main__":
    main()
