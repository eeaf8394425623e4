"""Prototype fitting: lightning_i2x.prototypes.fit_prototypes (FAISS PCA + k-means) against
scikit-learn on the same vectors, at the same work and on all vectors.

    python benchmarks/bench_prototypes.py [--quick] [--out FILE] [--repeats R] [--n N] [--k K]

  faiss           fit_prototypes(x, K, n_components=64, niter=20, seed=0): FAISS PCA on all vectors, a
                  k-means++ start, FAISS k-means on a sample of at most 256 x K vectors (FAISS's
                  default max_points_per_centroid), then the nearest-prototype assignment of every vector
  sklearn_sample  the same work in scikit-learn: PCA(64).fit_transform(x), KMeans(K, n_init=1,
                  max_iter=20) on a seeded random sample of the same size (min(N, 256 x K) vectors),
                  then ``predict`` on every vector
  minibatch       PCA(64).fit_transform(x), then MiniBatchKMeans(K, n_init=1, max_iter=20,
                  batch_size=1024) on every vector (labels of every vector included)
  sklearn_all     PCA(64).fit_transform(x), then KMeans(K, n_init=1, max_iter=20) on every vector
                  (k-means++ start, scikit-learn's default tolerance, so it may stop before 20
                  iterations): more work than FAISS does, so most of that speed-up is the sampling

The vectors are synthetic activation-like features (256 Gaussian clusters in a 48-d latent space,
a random linear map to 512-d, ReLU, small noise). Quality: the inertia (sum of squared distances
to the nearest centroid) of every method over ALL vectors in one PCA space, FAISS's; scikit-learn's
centroids are lifted back to 512-d (components, mean) and projected there.

Spread (issue: the all-vectors ratio moved between 4.7x and 5.7x across releases): the FAISS and
all-vectors scikit-learn fits again, interleaved, at 1 and at 2 threads (``faiss.omp_set_num_threads``
and ``threadpoolctl.threadpool_limits`` for scikit-learn's OpenMP and BLAS), each round's ratio
shown, so a reader sees how much of the ratio is threads and how much is round-to-round noise.

Last line: sklearn_sample_vs_faiss_time and faiss_vs_sklearn_sample_inertia (the same work),
minibatch_vs_faiss_time and faiss_vs_minibatch_inertia, then sklearn_vs_faiss_time and
faiss_vs_sklearn_inertia (scikit-learn KMeans on all vectors), sklearn_vs_faiss_time_1thread
and sklearn_vs_faiss_time_spread (max / min of the per-round ratios over both thread counts). Times: median scikit-learn time /
median FAISS time; inertias: FAISS's / scikit-learn's (below 1 means FAISS fits better).
"""

from __future__ import annotations

import sys
import time

import faiss
import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
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
    ap.add_argument("--spread-repeats", type=int, default=None, help="rounds per thread count of the spread section (default 3; --quick 1)")
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

    def sample_size(m: int) -> int:
        return min(m, 256 * k)  # FAISS's training sample: max_points_per_centroid (256) x K

    def run_sklearn_all(data=x):
        pca = PCA(COMPONENTS, random_state=0)
        y = pca.fit_transform(data)
        km = KMeans(k, n_init=1, max_iter=NITER, random_state=0).fit(y)
        last["sklearn_all"] = (pca, km)

    def run_sklearn_sample(data=x):
        pca = PCA(COMPONENTS, random_state=0)
        y = pca.fit_transform(data)
        rows = np.random.default_rng(0).choice(y.shape[0], sample_size(y.shape[0]), replace=False)
        km = KMeans(k, n_init=1, max_iter=NITER, random_state=0).fit(y[rows])
        km.predict(y)  # every vector's prototype, as fit_prototypes returns
        last["sklearn_sample"] = (pca, km)

    def run_minibatch(data=x):
        pca = PCA(COMPONENTS, random_state=0)
        y = pca.fit_transform(data)
        km = MiniBatchKMeans(k, n_init=1, max_iter=NITER, batch_size=1024, random_state=0).fit(y)
        last["minibatch"] = (pca, km)

    variants = {"faiss": run_faiss, "sklearn_sample": run_sklearn_sample, "minibatch": run_minibatch, "sklearn_all": run_sklearn_all}
    # warm-up on a small slice (loads code paths and thread pools without a second full fit)
    warm = x[: min(n, 20_000)]
    for fn in variants.values():
        fn(warm)
    times = _common.interleaved(variants, repeats, warmup=0)
    med = {name: _common.median(v) for name, v in times.items()}

    protos, _ = last["faiss"]
    y = protos.project(x)
    faiss_inertia = protos.inertia

    def lifted_inertia(key):
        pca, km = last[key]
        lifted = (km.cluster_centers_.astype(np.float64) @ pca.components_ + pca.mean_).astype(np.float32)
        return inertia(y, protos.project(lifted))

    inert = {key: lifted_inertia(key) for key in ("sklearn_sample", "minibatch", "sklearn_all")}
    time_ratio = {key: med[key] / med["faiss"] for key in inert}
    inertia_ratio = {key: faiss_inertia / inert[key] for key in inert}
    n_sample = sample_size(n)

    header = ["method", "vectors k-means trains on", "median time", "min-max", "k-means iterations",
              "inertia, all vectors, FAISS PCA space", "FAISS inertia / this", "this time / FAISS time"]
    rows = [
        ["lightning_i2x fit_prototypes (FAISS)", f"{n_sample} (FAISS's sample)", _common.fmt_s(med["faiss"]),
         _common.spread(times["faiss"]), NITER, f"{faiss_inertia:.6g}", "1", "1"],
    ]
    labels = {"sklearn_sample": ("scikit-learn PCA + KMeans on a sample + predict (same work)", f"{n_sample} (seeded sample)"),
              "minibatch": ("scikit-learn PCA + MiniBatchKMeans", f"{n} (batches of 1024)"),
              "sklearn_all": ("scikit-learn PCA + KMeans on all vectors", f"{n} (all)")}
    for key, (label, trained) in labels.items():
        km = last[key][1]
        rows.append([label, trained, _common.fmt_s(med[key]), _common.spread(times[key]), km.n_iter_,
                     f"{inert[key]:.6g}", f"{inertia_ratio[key]:.4f}", f"{time_ratio[key]:.2f}"])
    spread_rows, round_ratios, thread_ratio = [], [], {}
    threads_now = faiss.omp_get_max_threads()
    from threadpoolctl import threadpool_limits

    for t in sorted({1, threads_now}):
        faiss.omp_set_num_threads(t)
        with threadpool_limits(t):
            st = _common.interleaved({"faiss": run_faiss, "sklearn_all": run_sklearn_all},
                                     args.spread_repeats or (1 if args.quick else 3), warmup=0)
        per_round = [b / a for a, b in zip(st["faiss"], st["sklearn_all"])]
        round_ratios += per_round
        thread_ratio[t] = _common.median(st["sklearn_all"]) / _common.median(st["faiss"])
        spread_rows.append([t, _common.fmt_s(_common.median(st["faiss"])), _common.spread(st["faiss"]),
                            _common.fmt_s(_common.median(st["sklearn_all"])), _common.spread(st["sklearn_all"]),
                            f"{thread_ratio[t]:.2f}", ", ".join(f"{r:.2f}" for r in per_round)])
    faiss.omp_set_num_threads(threads_now)
    scaled = "" if n >= 500_000 or args.quick else f" (scaled down from the 500000 target: {n})"
    body = "\n".join([
        f"N = {n} vectors{scaled} of dimension {DIM}, PCA to {COMPONENTS}, K = {k}, {NITER} k-means iterations at most, "
        f"seed 0. Median of {repeats} interleaved rounds after a warm-up on {warm.shape[0]} vectors.",
        "",
        _common.table(header, rows),
        "",
        f"- the same work (k-means on {n_sample} vectors, every vector assigned): scikit-learn / FAISS time "
        f"{time_ratio['sklearn_sample']:.2f}, FAISS / scikit-learn inertia {inertia_ratio['sklearn_sample']:.4f}.",
        f"- MiniBatchKMeans: time ratio {time_ratio['minibatch']:.2f}, inertia ratio {inertia_ratio['minibatch']:.4f}.",
        f"- scikit-learn KMeans on all {n} vectors (more work than FAISS does): time ratio {time_ratio['sklearn_all']:.2f}, "
        f"inertia ratio {inertia_ratio['sklearn_all']:.4f}; most of this speed-up is FAISS's sampling.",
        "",
        "Spread: FAISS against scikit-learn KMeans on all vectors, again, at each thread count (FAISS's OpenMP and "
        "scikit-learn's OpenMP and BLAS limited together), interleaved:",
        "",
        _common.table(["threads", "FAISS median", "min-max", "scikit-learn all median", "min-max", "time ratio",
                       "ratio per round"], spread_rows),
        "",
        f"- per-round ratios range {min(round_ratios):.2f}-{max(round_ratios):.2f} (max / min "
        f"{max(round_ratios) / min(round_ratios):.2f}); the thread count moves the median ratio from "
        f"{thread_ratio[1]:.2f} (1 thread) to {thread_ratio[max(thread_ratio)]:.2f} ({max(thread_ratio)} threads).",
        "- Vectors: synthetic activation-like features (256 Gaussian clusters in a 48-d latent space, random linear "
        "map to 512-d, ReLU, noise 0.1). Every PCA is fitted on all vectors; all inertias are over all vectors.",
    ])
    _common.report(
        "Prototype fitting: FAISS (fit_prototypes) vs scikit-learn",
        body,
        {"sklearn_sample_vs_faiss_time": time_ratio["sklearn_sample"], "faiss_vs_sklearn_sample_inertia": inertia_ratio["sklearn_sample"],
         "minibatch_vs_faiss_time": time_ratio["minibatch"], "faiss_vs_minibatch_inertia": inertia_ratio["minibatch"],
         "sklearn_vs_faiss_time": time_ratio["sklearn_all"], "faiss_vs_sklearn_inertia": inertia_ratio["sklearn_all"],
         "sklearn_vs_faiss_time_1thread": thread_ratio[1], "sklearn_vs_faiss_time_spread": max(round_ratios) / min(round_ratios)},
        args.out, info, args.quick,
    )


if __name__ == "__main__":
    main()
