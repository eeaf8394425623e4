"""Memory of one I2X record at real sizes: torchvision ResNet-50, probes of hundreds to thousands.

    python benchmarks/bench_scale.py [--quick] [--out FILE] [--size PX] [--probes 256,1024,4096] [--old-max N]
        [--quality-max N] [--threads N]

A record = the probe pass (GradCAM maps, confidences, target-layer activations) + the prototype
fit (PCA to 64, K = 32 k-means, the callback's defaults). Two paths, same model and images:

  old  the previous (0.1) implementation's approach, RE-IMPLEMENTED in this script, not imported
       from 0.1 (bench_overhead.py imports the 0.1 package from git; this path is a
       reconstruction of what 0.1 did): the input requires grad (autograd records the whole
       network), every batch's activations are kept, concatenated, flattened to an (N*h*w, d)
       float32 array and handed to this version's fit_prototypes
  new  lightning_i2x.saliency.probe_batches (autograd records from the target layer on) feeding each
       batch's activations to lightning_i2x.prototypes.PrototypeStream, which keeps only their
       projection; stream.fit() at the end

Memory protocol: every measurement runs in a fresh Python process (spawned from this script with
--child) that builds the model (random init, seed 0, eval mode) and the probe images (N(0, 1),
seed 0, written in place), reads its resident set size (/proc/self/statm), runs the measured
operation once, and reads the peak resident set size (resource.getrusage ru_maxrss). "Peak extra"
= peak - resident size before the operation: host memory of torch, NumPy and FAISS alike, what
the operating system sees. The process's peak before the operation is checked to be no higher
than its resident size then (else the row is flagged). Reference: one no_grad forward of one
probe batch in the same kind of process. The children run one after another (--quick: two at a
time, one thread each).

Quality: in one more process per probe size, the target-layer activations of the probe set
(no_grad forward; the maps do not matter here) go both to fit_prototypes on all vectors (the
full computation) and through PrototypeStream batch by batch. Both partitions are scored by the
k-means objective in the full computation's PCA space: y = full projection of every vector,
inertia(partition) = sum over clusters of squared distances to the cluster's mean of y.
inertia_vs_full = stream's / full's (1 = as good; below 1 = better).

callback  the record as a user pays it: ``trainer.validate`` with ``I2XCallback`` at its defaults
       (views, background analysis), the probe an (images, labels) pair made before the baseline; a
       sampling thread reads the resident size every 2 ms and charges it to the step running then
       (materialise_probe, open_or_resume, probe_pass, analyse_record, log_summary, log_figures)

Last line: record_peak_mb_growth (new record peak extra at the largest probe / at the smallest),
new_record_vs_forward (new record peak extra at the largest probe / one no_grad forward of a
probe batch), new_batch_vs_forward (one new probe batch / one no_grad forward), old_vs_new_record
(old / new record peak extra at the largest probe both ran), callback_record_growth and
callback_record_vs_forward (the same two for the callback record), inertia_vs_full (worst probe size).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision

from lightning_i2x.prototypes import PrototypeStream, fit_prototypes
from lightning_i2x.saliency import normalise_maps, probe_batches

import _common

BATCH, K, COMPONENTS, NITER = 64, 32, 64, 20
PAGE = 4096


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- the previous implementation (lightning_i2x 6b7d9a0), for the side-by-side ---------------------


def old_gradcam(model, layer, images, targets):
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            x = images.clone().requires_grad_(True)
            logits = model(x).float()
            out = captured[-1]
            score = logits.gather(1, targets.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, out)
    finally:
        handle.remove()
    acts = out.detach()
    cam = normalise_maps(torch.relu((grad.mean(dim=(2, 3))[:, :, None, None] * acts).sum(dim=1)))
    return acts, cam, torch.softmax(logits.detach(), dim=1)


def old_record(model, images, labels):
    parts = ([], [], [])
    for s in range(0, images.shape[0], BATCH):
        for out, t in zip(parts, old_gradcam(model, model.layer4, images[s : s + BATCH], labels[s : s + BATCH])):
            out.append(t.float())
    acts, cams, conf = (torch.cat(p) for p in parts)
    cams_np, conf_np = cams.numpy(), conf.numpy()
    feats = acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1]).cpu().numpy()
    return fit_prototypes(feats, K, n_components=COMPONENTS, niter=NITER, seed=0, return_distances=True), cams_np, conf_np


def new_record(model, images, labels):
    stream = PrototypeStream(K, n_components=COMPONENTS, niter=NITER, seed=0)
    cams, conf = [], []
    for batch in probe_batches(model, model.layer4, images, labels, batch_size=BATCH):
        stream.add(batch.activations)
        cams.append(batch.cams.cpu().numpy())
        conf.append(batch.confidences.cpu().numpy())
    return stream.fit(), np.concatenate(cams), np.concatenate(conf)


class PhasePeaks:
    """Peak resident set size per phase of a record, sampled every 2 ms by a thread: the callback's
    steps are wrapped so the sampler knows which one runs (nested steps join their names by '/')."""

    PHASES = (("lightning_i2x.record", ("materialise_probe", "open_or_resume", "probe_pass", "analyse_record")),
              ("lightning_i2x.callbacks._i2x", ("log_summary", "log_figures")))

    def __init__(self) -> None:
        import threading
        self.stack, self.peaks, self.seconds, self._stop = ["other"], {}, {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            key = "/".join(self.stack[1:]) or "other"
            self.peaks[key] = max(self.peaks.get(key, 0), rss_bytes())
            time.sleep(0.002)

    def wrap(self) -> None:
        import functools
        import importlib

        for module_name, names in self.PHASES:
            module = importlib.import_module(module_name)
            for name in names:
                fn = getattr(module, name)

                def wrapped(*a, _fn=fn, _name=name, **kw):
                    self.stack.append(_name)
                    start = time.perf_counter()
                    try:
                        return _fn(*a, **kw)
                    finally:
                        self.stack.pop()
                        self.seconds[_name] = self.seconds.get(_name, 0.0) + time.perf_counter() - start

                setattr(module, name, functools.wraps(fn)(wrapped))

    def __enter__(self) -> PhasePeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def callback_record(model, images, labels) -> dict:
    """One record as a user gets it: ``trainer.validate`` with ``I2XCallback`` at its defaults (views,
    background analysis), the probe passed as an (images, labels) pair; returns the per-phase peaks."""
    import tempfile

    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_i2x import I2XCallback, ProbePassOptions

    class Wrapped(pl.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

        def validation_step(self, batch, _):
            return None

    root = tempfile.mkdtemp()
    callback = I2XCallback((images, labels), "net.layer4", K, run_dir=f"{root}/run", probe_pass=ProbePassOptions(batch_size=BATCH))
    trainer = pl.Trainer(accelerator="cpu", logger=pl.loggers.TensorBoardLogger(root), callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False)
    phases = PhasePeaks()
    phases.wrap()
    with phases:
        trainer.validate(Wrapped(model), DataLoader(TensorDataset(images[:BATCH], labels[:BATCH]), batch_size=BATCH), verbose=False)
    return {"peaks": phases.peaks, "seconds": phases.seconds}


def partition_inertia(y: np.ndarray, labels: np.ndarray) -> float:
    """k-means objective of a partition: sum |y|^2 - sum_c |sum_{i in c} y_i|^2 / n_c (float64)."""
    y = y.astype(np.float64)
    k = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.stack([np.bincount(labels, weights=y[:, j], minlength=k) for j in range(y.shape[1])], axis=1)
    keep = counts > 0
    return float((y**2).sum() - ((sums[keep] ** 2).sum(1) / counts[keep]).sum())


def child(spec: dict) -> dict:
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model = torchvision.models.resnet50(num_classes=spec.get("classes", 1000)).eval()
    n, size = spec["n"], spec["size"]
    g = torch.Generator().manual_seed(0)
    images = torch.empty(n, 3, size, size).normal_(generator=g)
    labels = torch.randint(0, spec.get("classes", 1000), (n,), generator=g)
    mode = spec["mode"]
    if mode == "quality":
        feats = []
        hook = model.layer4.register_forward_hook(lambda _m, _i, out: feats.append(out))
        stream = PrototypeStream(K, n_components=COMPONENTS, niter=NITER, seed=0)
        with torch.no_grad():
            for s in range(0, n, BATCH):
                model(images[s : s + BATCH])
                stream.add(feats[-1])
        hook.remove()
        acts = torch.cat(feats)
        x = acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1]).numpy()
        t0 = time.perf_counter()
        full, full_assignment = fit_prototypes(x, K, n_components=COMPONENTS, niter=NITER, seed=0)
        t_full = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, stream_assignment, _ = stream.fit()
        t_stream = time.perf_counter() - t0
        y = full.project(x)
        return {"vectors": int(x.shape[0]), "dim": int(x.shape[1]), "full": partition_inertia(y, full_assignment),
                "stream": partition_inertia(y, stream_assignment), "t_full": t_full, "t_stream_fit": t_stream}
    fn = {
        "forward": lambda: model(images[:BATCH]),
        "old_batch": lambda: old_gradcam(model, model.layer4, images[:BATCH], labels[:BATCH]),
        "new_batch": lambda: next(probe_batches(model, model.layer4, images[:BATCH], labels[:BATCH], batch_size=BATCH)),
        "old": lambda: old_record(model, images, labels),
        "new": lambda: new_record(model, images, labels),
        "callback": lambda: callback_record(model, images, labels),
    }[mode]
    base, before_peak = rss_bytes(), peak_bytes()
    t0 = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            out = fn()
    else:
        out = fn()
    seconds = time.perf_counter() - t0
    peak = peak_bytes()
    phases = {k: {"extra": v - base, "seconds": out["seconds"].get(k)} for k, v in out["peaks"].items()} if mode == "callback" else None
    del out
    return {"extra": peak - base, "earlier_peak_over_base": max(0, before_peak - base), "seconds": seconds, "phases": phases}


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {spec['mode']:>9} n={spec['n']:<5} {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def median_child(runs: list[dict]) -> dict:
    """The run whose peak is the median of ``runs`` (its phases and time with it; an even count takes
    the lower middle), plus every run's peak, so the table can show the spread."""
    ordered = sorted(runs, key=lambda r: r.get("extra", 0))
    return {**ordered[(len(ordered) - 1) // 2], "extras": [r.get("extra", 0) for r in runs]}


def mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    ap = _common.parser(__doc__)
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 112; --quick: 64)")
    ap.add_argument("--probes", default=None, help="comma-separated probe sizes (default 256,1024,4096; --quick: 64,128)")
    ap.add_argument("--old-max", type=int, default=None, help="largest probe the old path runs at (default: all)")
    ap.add_argument("--quality-max", type=int, default=None, help="largest probe the quality comparison runs at (default: all)")
    args = ap.parse_args(argv)
    _common.set_threads(args.threads)
    info = _common.machine()
    size = args.size or (64 if args.quick else 112)
    probes = [int(p) for p in (args.probes or ("64,128" if args.quick else "256,1024,4096")).split(",")]
    old_max = args.old_max or (min(probes) if args.quick else max(probes))  # --quick: the old path and the quality at the smallest only
    quality_max = args.quality_max or (min(probes) if args.quick else max(probes))
    # --quick: two children at a time, one thread each (each still alone in its process; --quick measures nothing)
    base = {"size": size, "threads": args.threads or (1 if args.quick else None), "classes": 10 if args.quick else 1000}
    specs: dict = {m: {**base, "mode": m, "n": BATCH} for m in ("forward", "old_batch", "new_batch")}
    for n in probes:
        for mode in ("old", "new", "callback"):
            if mode == "old" and n > old_max:
                continue
            specs[mode, n] = {**base, "mode": mode, "n": n}
        if n <= quality_max:
            specs["quality", n] = {**base, "mode": "quality", "n": n}
    # each figure is the median of --repeats fresh processes (default 3; --quick 1), run in interleaved
    # rounds (every spec once, then again): one process's peak moves by up to +-25 % with glibc's arenas
    repeats = args.repeats or (1 if args.quick else 3)
    keys = [k for _ in range(repeats) for k in specs if _ == 0 or k[0] != "quality"]  # the quality figures are deterministic: once
    with ThreadPoolExecutor(2 if args.quick else 1) as pool:
        results = list(pool.map(run_child, [specs[k] for k in keys]))
    done = {k: median_child([r for key, r in zip(keys, results) if key == k]) for k in specs}
    fwd = done["forward"]
    batch = {m: done[m] for m in ("old_batch", "new_batch")}
    rec: dict[tuple[str, int], dict] = {k: v for k, v in done.items() if isinstance(k, tuple) and k[0] != "quality"}
    quality: dict[int, dict] = {k[1]: v for k, v in done.items() if isinstance(k, tuple) and k[0] == "quality"}

    spread = lambda r: f" ({mib(min(r['extras']))}-{mib(max(r['extras']))})" if len(r["extras"]) > 1 else ""  # noqa: E731
    flag = lambda r: spread(r) + (" (!)" if r["earlier_peak_over_base"] > 0.05 * max(r["extra"], 1) else "")  # noqa: E731
    rows = [["no_grad forward, one batch", BATCH, mib(fwd["extra"]) + flag(fwd), "1", _common.fmt_s(fwd["seconds"])]]
    for m, label in (("old_batch", "old probe batch (graph from the input)"), ("new_batch", "new probe batch (graph from layer4)")):
        rows.append([label, BATCH, mib(batch[m]["extra"]) + flag(batch[m]), f"{batch[m]['extra'] / fwd['extra']:.2f}", _common.fmt_s(batch[m]["seconds"])])
    labels = {"old": "old record (probe pass + prototype fit)", "new": "new record (probe pass + prototype fit)",
              "callback": "callback record (trainer.validate, defaults)"}
    for n in probes:
        for mode in ("old", "new", "callback"):
            if (mode, n) in rec:
                r = rec[mode, n]
                rows.append([labels[mode], n, mib(r["extra"]) + flag(r), f"{r['extra'] / fwd['extra']:.2f}", _common.fmt_s(r["seconds"])])
    phase_names = list(dict.fromkeys(k for n in probes for k in rec["callback", n]["phases"]))
    prow = [[name] + [f"{mib(rec['callback', n]['phases'].get(name, {}).get('extra', 0))} / "
                      f"{_common.fmt_s(rec['callback', n]['phases'].get(name, {}).get('seconds') or 0)}" for n in probes]
            for name in phase_names]
    qrows = [[n, q["vectors"], q["dim"], f"{q['full']:.6g}", f"{q['stream']:.6g}", f"{q['stream'] / q['full']:.4f}",
              _common.fmt_s(q["t_full"]), _common.fmt_s(q["t_stream_fit"])] for n, q in quality.items()]
    lo, hi = min(probes), max(probes)
    both = max(n for n in probes if ("old", n) in rec)
    ratios = {
        "record_peak_mb_growth": rec["new", hi]["extra"] / rec["new", lo]["extra"],
        "new_record_vs_forward": rec["new", hi]["extra"] / fwd["extra"],
        "callback_record_growth": rec["callback", hi]["extra"] / rec["callback", lo]["extra"],
        "callback_record_vs_forward": rec["callback", hi]["extra"] / fwd["extra"],
        "new_batch_vs_forward": batch["new_batch"]["extra"] / fwd["extra"],
        "old_vs_new_record": rec["old", both]["extra"] / rec["new", both]["extra"],
        "inertia_vs_full": max(q["stream"] / q["full"] for q in quality.values()),
    }
    skipped = [f"the old path above {old_max} images"] * (old_max < hi) + [f"the quality comparison above {quality_max} images"] * (quality_max < hi)
    body = "\n".join([
        f"torchvision ResNet-50 (random init, eval, CPU), {size} x {size} px inputs, target layer `layer4` "
        f"(d = 2048, {-(-size // 32)} x {-(-size // 32)} map), probe batch {BATCH}, K = {K}, PCA to {COMPONENTS}, {NITER} k-means "
        "iterations, seed 0. Each figure is the median of --repeats fresh processes, run in interleaved rounds (see the protocol in the script's docstring); peak extra = "
        "peak resident set size during the operation - resident set size before it. (!) = the process had peaked "
        "higher before the operation, so the row may be an underestimate. The old path is a re-implementation in this "
        "script of 0.1's approach (whole-network graph, all activations concatenated), not 0.1's code imported.",
        "",
        _common.table(["operation", "images", f"peak extra host memory (MiB; median of {repeats} fresh processes" + (", min-max)" if repeats > 1 else ")"), "/ no_grad forward", "time"], rows),
        "",
        "Where a callback record's memory goes: peak extra resident memory (MiB) / time in each phase, sampled every "
        "2 ms (a phase's peak includes what earlier phases left resident; `other` is Lightning's own validate loop).",
        "",
        _common.table(["phase"] + [f"{n} images" for n in probes], prow),
        "",
        "Prototype quality: both partitions scored in the full computation's PCA space (k-means objective, float64).",
        "",
        _common.table(["probe images", "vectors", "d", "inertia, full fit_prototypes", "inertia, PrototypeStream",
                       "stream / full", "full fit time", "stream fit() time"], qrows),
        "",
        f"- record peak growth {lo} -> {hi} images (new path): x{ratios['record_peak_mb_growth']:.3f}; "
        f"new record / one no_grad forward: {ratios['new_record_vs_forward']:.2f}; new probe batch / no_grad forward: "
        f"{ratios['new_batch_vs_forward']:.2f}; old / new record at {both} images: {ratios['old_vs_new_record']:.2f}.",
        *([f"- Not run (--old-max / --quality-max): {' and '.join(skipped)}; both hold every feature vector of the probe "
           "at once (the cost the new path removes), too slow at that size on this machine."] if skipped else []),
        f"- callback record (the whole of `trainer.validate` with `I2XCallback`, views and background analysis at their "
        f"defaults, the probe an (images, labels) pair): growth {lo} -> {hi} x{ratios['callback_record_growth']:.3f}, "
        f"/ one no_grad forward {ratios['callback_record_vs_forward']:.2f}.",
        "- Goals: the callback record's peak grows <= 10 % from the smallest to the largest probe and stays <= 1.6 x a "
        "no_grad forward of one probe batch; the new record's <= 1.5 x; inertia_vs_full <= 1.02.",
    ])
    _common.report("Record memory at scale: ResNet-50, graph from the target layer + streaming prototypes", body, ratios,
                   args.out, info, args.quick)


if __name__ == "__main__":
    main()
