"""Bytes gathered and each rank's peak memory of one distributed record, as the probe grows.

    python benchmarks/bench_distributed.py [--quick] [--out FILE] [--probes 256,512,1024,2048] [--worlds 2,4]
        [--channels D] [--side S] [--threads N]

A record = each rank's probe pass over its share (GradCAM maps, confidences, target-layer
features) + the gather + the prototype fit (PCA to 64, K = 32 k-means, the callback's defaults),
in W gloo processes on the CPU. The model: Conv2d(3, D, 3) -> ReLU at the target layer (D x S x
S; default 256 x 7 x 7, ResNet-50 layer4's map size at 224 px with fewer channels), global pool,
a linear head to 10 classes; random init, seed 0; images N(0, 1), seed 0; probe batches of 64.

  old  ``record.gather_evidence`` (the 0.3 gather): every rank all-gathers every rank's whole
       activations (share x D x S x S float32) with maps and confidences; rank 0 streams the
       gathered activations into a PrototypeStream and fits (what Recorder.append did with them)
  new  ``record.distributed_probe_pass``: each rank streams its share into its own stream; the
       subspace, PCA moments, k-means sample rows, centroids and previous assignment cross, then
       the per-location results (assignment, distances, maps, confidences, pooled features)

Bytes: what the collectives hand each rank (the all_gather outputs and broadcast tensors; the
largest over the ranks; rank 0 receives as much as any). Peak memory: every measurement runs in
fresh processes; each rank reads its resident size (/proc/self/statm) just before the record and
its peak resident size (ru_maxrss) after it: "peak extra" = the difference, host memory of torch,
NumPy and FAISS alike. Rank 0 and the largest of the other ranks are reported. Seconds: the
record's wall time on rank 0, one run (not interleaved: each size runs in its own processes), for
the old/new ratio only. Equality: after the measurement, rank 0 of every new run fits the whole
probe in one process (the callback's single-process path) and compares the assignment (exact)
and the centroids (largest difference relative to their largest entry).

Growth exponents are least-squares slopes of log(value) on log(N) over the probe sizes.

Last line: new_vs_old_bytes_w<W> (new / old bytes received per rank at the largest probe),
bytes_growth_old_w<W> and bytes_growth_new_w<W> (growth exponents), peak_growth_old_w<W> and
peak_growth_new_w<W> (of the largest peak extra over the ranks), new_vs_old_peak_w<W> (at the
largest probe), new_vs_old_seconds_w<W>, equal_to_single (1 when every new run's assignment equals
one process's), centroid_max_rel_diff (the largest over the runs).
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lightning_i2x.options import ProbePassOptions
from lightning_i2x.record import Group, ProbeEvidence, Recorder, distributed_probe_pass, gather_evidence, probe_pass, probe_share
from lightning_i2x.saliency import TargetLayer

import _common

BATCH, K, CLASSES, PAGE = 64, 32, 10, 4096


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def model_and_probe(n: int, channels: int, side: int):
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU())
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, CLASSES)).eval()
    images = torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % CLASSES
    return model, TargetLayer("0", features, (channels, side, side), CLASSES), images, labels


class Counted:
    """gloo collectives that count the bytes they hand this rank."""

    def __init__(self, world: int):
        self.world, self.received = world, 0

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        out = torch.stack(parts)  # as Lightning's all_gather returns it
        del parts
        self.received += out.numel() * out.element_size()
        return out

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.broadcast(t, src=0)
        self.received += t.numel() * t.element_size()
        return t


def _guard(where, fn, *args, **kw):
    return fn(*args, **kw)  # a benchmark: any failure stops it


def rank_main(spec: dict) -> dict:
    """One rank of one record; returns what it measured."""
    rank, world, n = spec["rank"], spec["world"], spec["n"]
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{spec['port']}", rank=rank, world_size=world)
    model, layer, images, labels = model_and_probe(n, spec["channels"], spec["side"])
    recorder = Recorder(K)
    options = ProbePassOptions(batch_size=BATCH)
    run_pass = lambda x, y, stream: probe_pass(model, layer.module, x, y, options=options, stream=stream)  # noqa: E731
    counted = Counted(world)
    probe_pass(model, layer.module, images[:2], labels[:2])  # warm-up: the first pass's one-off allocations
    dist.barrier()
    base, before_peak, t0 = rss_bytes(), peak_bytes(), time.perf_counter()
    if spec["mode"] == "old":
        part = probe_share(rank, world, n)
        local = run_pass(images[part], labels[part], None) if part.stop > part.start else ProbeEvidence.empty(layer.feature_shape, CLASSES)
        evidence, _ = gather_evidence(counted.all_gather, local, rank=rank, world=world, num_probe=n, feature_shape=layer.feature_shape,
                                      num_classes=CLASSES, device="cpu")
        del local
        if rank == 0:
            stream = recorder.new_stream()
            for s in range(0, n, 256):
                stream.add(evidence.activations[s : s + 256])
            fitted = stream.fit()
        del evidence
    else:
        group = Group(rank, world, counted.all_gather, counted.broadcast)
        evidence = distributed_probe_pass(group, run_pass, _guard, images, labels, recorder, layer, batch_size=BATCH, previous=lambda: None)
        fitted = evidence.stream.fit() if rank == 0 else None
    seconds = time.perf_counter() - t0
    out = {"rank": rank, "extra": peak_bytes() - base, "earlier_peak_over_base": max(0, before_peak - base), "bytes": counted.received,
           "seconds": seconds}
    if rank == 0 and spec["mode"] == "new":  # after the measurement: one process on the whole probe
        single = run_pass(images, labels, recorder.new_stream()).stream.fit()
        out["equal"] = bool(np.array_equal(fitted[1], single[1]))
        out["centroid_rel_diff"] = float(np.abs(fitted[0].centroids - single[0].centroids).max() / np.abs(single[0].centroids).max())
    dist.destroy_process_group()
    return out


def run_record(spec: dict) -> dict:
    """One record in ``world`` fresh processes; rank 0's figures plus the largest of the others."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, __file__, "--child", json.dumps({**spec, "rank": r, "port": port})],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(spec["world"])]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"rank of {spec} failed:\n{stderr[-3000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    r0, others = results[0], results[1:]
    row = {**r0, "bytes": max(r["bytes"] for r in results), "extra_others": max(r["extra"] for r in others),
           "flag": any(r["earlier_peak_over_base"] > 0.05 * max(r["extra"], 1) for r in results)}
    print(f"  {spec['mode']:>3} world={spec['world']} n={spec['n']:<5} {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(rank_main(json.loads(sys.argv[2]))))
        return
    ap = _common.parser(__doc__)
    ap.add_argument("--probes", default=None, help="comma-separated probe sizes (default 256,512,1024,2048; --quick: 128,256)")
    ap.add_argument("--worlds", default=None, help="comma-separated process counts (default 2,4; --quick: 2)")
    ap.add_argument("--channels", type=int, default=256, help="target-layer channels D (default 256)")
    ap.add_argument("--side", type=int, default=7, help="target-layer map side S (default 7)")
    args = ap.parse_args(argv)
    info = {**_common.machine(), "device": "cpu, gloo"}
    probes = [int(p) for p in (args.probes or ("128,256" if args.quick else "256,512,1024,2048")).split(",")]
    worlds = [int(w) for w in (args.worlds or ("2" if args.quick else "2,4")).split(",")]
    base = {"threads": args.threads, "channels": args.channels, "side": args.side}
    rec = {(m, w, n): run_record({**base, "mode": m, "world": w, "n": n}) for w in worlds for n in probes for m in ("old", "new")}
    mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    rows = [[w, n, m, _common.fmt_bytes(r["bytes"]), mib(r["extra"]) + (" (!)" if r["flag"] else ""), mib(r["extra_others"]),
             _common.fmt_s(r["seconds"]), "-" if m == "old" else ("yes" if r["equal"] else "NO") + f" ({r['centroid_rel_diff']:.1e})"]
            for (m, w, n), r in rec.items()]
    ratios: dict[str, float | None] = {}
    slopes = []
    for w in worlds:
        big = max(probes)
        ratios[f"new_vs_old_bytes_w{w}"] = rec["new", w, big]["bytes"] / rec["old", w, big]["bytes"]
        for m in ("old", "new"):
            ratios[f"bytes_growth_{m}_w{w}"] = _common.loglog_slope(probes, [rec[m, w, n]["bytes"] for n in probes])
            peaks = [max(rec[m, w, n]["extra"], rec[m, w, n]["extra_others"]) for n in probes]
            ratios[f"peak_growth_{m}_w{w}"] = _common.loglog_slope(probes, peaks)
        ratios[f"new_vs_old_peak_w{w}"] = max(rec["new", w, big]["extra"], rec["new", w, big]["extra_others"]) / max(
            rec["old", w, big]["extra"], rec["old", w, big]["extra_others"])
        ratios[f"new_vs_old_seconds_w{w}"] = rec["new", w, big]["seconds"] / rec["old", w, big]["seconds"]
        slopes.append([w, *(f"{ratios[f'{q}_growth_{m}_w{w}']:.2f}" for q in ("bytes", "peak") for m in ("old", "new"))])
    news = [r for (m, _, _), r in rec.items() if m == "new"]
    ratios["equal_to_single"] = float(all(r["equal"] for r in news))
    ratios["centroid_max_rel_diff"] = max(r["centroid_rel_diff"] for r in news)
    body = "\n\n".join([
        f"Target layer {args.channels} x {args.side} x {args.side}, K = {K}, batches of {BATCH}, {CLASSES} classes. (!) marks a rank whose "
        "peak before the record was above its resident size then (the peak extra is then a lower bound).",
        _common.table(["ranks", "probe images", "gather", "bytes received per rank", "peak extra, rank 0 (MiB)",
                       "peak extra, other ranks (MiB)", "record, rank 0", "equal to one process (centroid diff)"], rows),
        "Growth exponents over N (log-log slope):",
        _common.table(["ranks", "bytes, old", "bytes, new", "peak, old", "peak, new"], slopes),
    ])
    _common.report("Distributed record: bytes gathered and per-rank peak memory, old gather vs new", body, ratios, args.out, info,
                   args.quick)


if __name__ == "__main__":
    main()
