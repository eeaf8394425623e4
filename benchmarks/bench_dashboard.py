"""The dashboard's speed: the first view's data against ``I2XRun.load``, and each interaction's
request latency (p95), through werkzeug's test client (no network).

    python benchmarks/bench_dashboard.py [--quick] [--out FILE] [--repeats R]

A synthetic run (K = 128 prototypes, N = 5,000 probe images of 28 x 28, T = 50 checkpoints, a 7 x 7
map, 10 classes; --quick: K = 16, N = 300, T = 8) is built with ``I2XRun.create``,
``append_checkpoint`` and ``set_prototypes`` in a temporary directory. Timed, interleaved (5
rounds after a warm-up, medians): ``I2XRun.load`` and the first view (a fresh app: config +
overview, which loads the run); once: the explanation the page asks for next (Steps 4-6 on the whole run, once per state of the run); then, on the warm app, each
interaction ``--repeats`` times (default 50; --quick: 5) on random prototypes and images: a
prototype page, its sprite, an image page, its PNG, and the overview again.

Last line: first_view_vs_load (first view / load), explanation_vs_load and, per interaction, its
p95 in milliseconds.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import _common


def build(path: Path, k: int, n: int, t: int, m: int = 10, hw=(7, 7), size: int = 28, seed: int = 0):
    from lightning_i2x import I2XRun, Prototypes

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % m
    run = I2XRun.create(path, labels=labels, class_names=[str(c) for c in range(m)], feature_shape=hw, num_prototypes=k,
                        images=rng.normal(size=(n, 1, size, size)).astype(np.float32))
    for step in range(t):
        conf = rng.dirichlet(np.ones(m), size=n).astype(np.float32)
        conf[np.arange(n), labels] += 2 * step / t
        run.append_checkpoint(rng.random((n, *hw), dtype=np.float32), conf / conf.sum(1, keepdims=True), epoch=step, global_step=step)
    protos = Prototypes(projection=rng.normal(size=(8, 16)).astype(np.float32), bias=np.zeros(8, np.float32),
                        centroids=rng.normal(size=(k, 8)).astype(np.float32))
    run.set_prototypes(protos, rng.integers(0, k, size=(n, *hw)), reference=t - 1, distances=rng.random((n, *hw), dtype=np.float32))


def p95(xs) -> float:
    return float(np.percentile(np.asarray(xs), 95))


def main(argv=None) -> None:
    from werkzeug.test import Client

    from lightning_i2x import I2XRun
    from lightning_i2x.dashboard import DashboardApp

    info = {**_common.machine(), "packages": _common.versions()}  # at the start: the load average the run began under
    args = _common.parser(__doc__).parse_args(argv)
    k, n, t = (16, 300, 8) if args.quick else (128, 5000, 50)
    repeats = args.repeats or (5 if args.quick else 50)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        path = Path(tmp) / "run"
        build(path, k, n, t)

        def first_view():
            client = Client(DashboardApp(path))
            for url in ("/api/config", "/api/overview"):
                assert client.get(url).status_code == 200
            return client

        rounds = _common.interleaved({"load": lambda: I2XRun.load(path), "first view": first_view}, 5)
        load, first = _common.median(rounds["load"]), _common.median(rounds["first view"])
        client = first_view()
        t0 = time.perf_counter()
        assert client.get("/api/explanation").get_json()["explanation"] is not None
        explained = time.perf_counter() - t0
        interactions = {
            "prototype": lambda: f"/api/prototype?k={rng.integers(k)}",
            "sprite": lambda: f"/api/sprite.png?k={rng.integers(k)}",
            "image": lambda: f"/api/image?i={rng.integers(n)}",
            "image_png": lambda: f"/api/image.png?i={rng.integers(n)}",
            "overview": lambda: "/api/overview",
        }
        times: dict[str, list[float]] = {name: [] for name in interactions}
        sizes: dict[str, list[int]] = {name: [] for name in interactions}
        for _ in range(repeats):
            for name, url in interactions.items():
                u = url()
                t0 = time.perf_counter()
                r = client.get(u)
                times[name].append(time.perf_counter() - t0)
                assert r.status_code == 200, (u, r.data[:200])
                sizes[name].append(len(r.data))
    rows = [["I2XRun.load", _common.fmt_s(load), "-", "-"], ["first view (config + overview)", _common.fmt_s(first), "-", "-"],
            ["explanation (asked for after the first view)", _common.fmt_s(explained), "-", "-"]]
    rows += [[f"{name} request", _common.fmt_s(float(np.median(ts))), _common.fmt_s(p95(ts)), _common.fmt_bytes(float(np.median(sizes[name])))]
             for name, ts in times.items()]
    body = f"K = {k}, N = {n}, T = {t}; {repeats} requests per interaction\n\n" + _common.table(["what", "median", "p95", "response"], rows)
    ratios = {"first_view_vs_load": first / load, "explanation_vs_load": explained / load, **{f"{name}_p95_ms": p95(ts) * 1e3 for name, ts in times.items()}}
    _common.report("Dashboard: first view and interactions", body, ratios, args.out,
                   {"commit": _common.commit(), **info}, args.quick)


if __name__ == "__main__":
    main()
