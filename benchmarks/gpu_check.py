"""The GPU check, ready for the day a GPU is lent: one script, at most about 8 minutes, ratios only.

    python benchmarks/gpu_check.py [--out FILE] [--probe N] [--size PX]

Protocol (one process, one CUDA device, torchvision ResNet-50 with random weights in eval mode,
target layer ``layer4``, probe batch 64, seed 0):

  forward     one batch's ``no_grad`` forward: time (CUDA events, median of 5 after 2 warm-ups) and
              peak GPU memory above what was allocated before it (``torch.cuda.max_memory_allocated``)
  probe pass  ``probe_batches`` over N images at 224 px with ``torch.cuda.set_sync_debug_mode("error")``:
              any host synchronisation inside the loop raises, so "ok" means none; its time and peak
              GPU memory against the forward's
  record      ``Recorder.record`` of that evidence (prototype fit on the streamed projections,
              explanation) plus the probe pass, against the forward
  FAISS       k-means of the same projected vectors with FAISS on the GPU against the CPU (n/a when
              the installed FAISS has no GPU support: install the ``gpu`` extra)
  FSDP        whether ``I2XCallback`` under ``strategy="fsdp"`` is refused at setup with its message
              (expected today; the test to turn into support when FSDP is implemented)

Last line: probe_pass_vs_forward_time, probe_pass_vs_forward_memory, record_vs_forward_time,
faiss_gpu_vs_cpu_time, sync_free (1 = no host synchronisation in the probe loop).
Without CUDA it says so and exits with status 2: nothing here can be measured on a CPU.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torchvision

import _common

BATCH = 64


def cuda_seconds(fn, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return float(np.median(times))


def peak_above(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return peak


def faiss_ratio(vectors: np.ndarray, k: int) -> float | None:
    import faiss

    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() < 1:
        return None
    seconds = {}
    for gpu in (False, True):
        km = faiss.Kmeans(vectors.shape[1], k, niter=20, seed=0, gpu=gpu, max_points_per_centroid=256)
        start = time.perf_counter()
        km.train(vectors)
        seconds[gpu] = time.perf_counter() - start
    return seconds[False] / seconds[True]


def fsdp_refusal() -> str:
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_i2x.callbacks._strategy import check_strategy

    try:
        check_strategy(FSDPStrategy())
    except ValueError as e:
        return f"refused at setup: {e}"
    return "accepted"


def main(argv=None) -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--probe", type=int, default=1024, help="probe images (default 1024; --quick: 128)")
    ap.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; this check measures the GPU path only. Run it where a GPU is lent.", file=sys.stderr)
        raise SystemExit(2)
    from lightning_i2x.record import Recorder, open_run
    from lightning_i2x.saliency import probe_batches, resolve_target_layer

    info = _common.machine()
    info["gpu"] = torch.cuda.get_device_name(0)
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = torchvision.models.resnet50(num_classes=1000).eval().to(device)
    n = 128 if args.quick else args.probe
    g = torch.Generator().manual_seed(0)
    images = torch.empty(n, 3, args.size, args.size).normal_(generator=g)
    labels = torch.randint(0, 1000, (n,), generator=g)
    batch = images[:BATCH].to(device)

    def forward():
        with torch.no_grad():
            return model(batch)

    fwd_time, fwd_mem = cuda_seconds(forward), peak_above(forward)
    recorder = Recorder(32)

    def probe_pass():
        stream = recorder.new_stream()
        cams, confs = [], []
        torch.cuda.set_sync_debug_mode("error")
        try:
            for b in probe_batches(model, model.layer4, images.to(device), labels.to(device), batch_size=BATCH):
                stream.add(b.activations)
                cams.append(b.cams)
                confs.append(b.confidences)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return stream, torch.cat(cams), torch.cat(confs)

    sync_free = 1.0
    try:
        probe_pass()
    except RuntimeError as e:
        print(f"the probe pass synchronised with the host: {e}", file=sys.stderr)
        sync_free = 0.0
    pass_time, pass_mem = cuda_seconds(probe_pass, repeats=2, warmup=0), peak_above(probe_pass)

    import tempfile

    from lightning_i2x.record import ProbeEvidence

    layer = resolve_target_layer(model, "layer4", images[:2].to(device), forward_fn=lambda m, x: m(x))

    def record():
        stream, cams, confs = probe_pass()
        run = open_run(tempfile.mkdtemp(), images, labels, [str(c) for c in range(1000)], layer, num_prototypes=32, store_images=False)
        return recorder.record(run, ProbeEvidence(None, cams, confs, stream), epoch=0, global_step=0)

    start = time.perf_counter()
    record()
    record_time = time.perf_counter() - start
    feats = []
    hook = model.layer4.register_forward_hook(lambda _m, _i, out: feats.append(out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])))
    with torch.no_grad():
        for s in range(0, min(n, 512), BATCH):
            model(images[s : s + BATCH].to(device))
    hook.remove()
    vectors = torch.cat(feats)[:, :64].float().cpu().numpy()
    faiss_gpu = faiss_ratio(np.ascontiguousarray(vectors), 32)
    ratios = {
        "probe_pass_vs_forward_time": pass_time / (fwd_time * -(-n // BATCH)),
        "probe_pass_vs_forward_memory": pass_mem / fwd_mem,
        "record_vs_forward_time": record_time / (fwd_time * -(-n // BATCH)),
        "faiss_gpu_vs_cpu_time": faiss_gpu,
        "sync_free": sync_free,
    }
    rows = [
        ["no_grad forward, one batch", BATCH, _common.fmt_s(fwd_time), _common.fmt_bytes(fwd_mem)],
        ["probe pass (sync debug mode: error)", n, _common.fmt_s(pass_time), _common.fmt_bytes(pass_mem)],
        ["record (probe pass + prototypes + explanation)", n, _common.fmt_s(record_time), "-"],
    ]
    body = "\n".join([
        f"torchvision ResNet-50 (random init, eval) on {info['gpu']}, {args.size} px, layer4, batch {BATCH}, K = 32, seed 0; "
        "times are CUDA-event medians, memory is peak allocated above the start. Ratios against forwards are per batch "
        f"(the forward's time x {-(-n // BATCH)} batches).",
        "",
        _common.table(["operation", "images", "time", "peak GPU memory above start"], rows),
        "",
        f"- host synchronisation inside the probe loop: {'none' if sync_free else 'FOUND (see stderr)'}",
        f"- FAISS k-means GPU vs CPU: {'n/a (no GPU FAISS installed)' if faiss_gpu is None else f'{faiss_gpu:.2f}x'}",
        f"- strategy='fsdp': {fsdp_refusal()}",
    ])
    _common.report("GPU check: the probe pass, a record and FAISS on a CUDA device", body, ratios, args.out, info, args.quick)


if __name__ == "__main__":
    main()
