"""What I2XCallback adds to training, and how the analysis grows with checkpoints and probe size.

    python benchmarks/bench_overhead.py [--quick] [--out FILE] [--repeats R] [--data-dir DIR]

Part 1, fit overhead: whole fits of SmallCNN (batch 128, Adam) on a 12k-image subset of the
MNIST training set, validation on 2000 test images once per epoch, --fit-epochs epochs each,
without the callback (A) and with I2XCallback(every_n_epochs=1) (B: a record at every validation;
probe: 1000 test images, 100 per class; target layer ``features``; K=32; full analysis:
prototypes, ``I2XRun.explain``, the TensorBoard views with the callback defaults), interleaved
A B A B after an untimed warm-up pair, every fit from the same seed, initial weights and data
order. A fit is timed from ``trainer.fit`` to its return, which joins the background analysis, so
a record's analysis that runs during the next epoch (``async_analysis``, the default) counts with
the callback and never as an epoch "without" one. epoch_overhead = median fit with / median fit
without - 1: what recording at every validation adds to training; overhead_vs_probe_pass =
median over rounds of (fit with - fit without) / records per fit / the probe pass's time: what a
record adds to training's wall time in units of the probe pass. Run it with ``--threads 1`` as
well: on a 2-core CPU the worker competes with training for cores, which a GPU machine with idle
CPU cores does not.

Phase breakdown: one record's phases (append + prototype refit, explain, scalars + text), 0.1
(git --baseline-ref, imported side by side) against now, at T = --breakdown-checkpoints: a run
holding T-1 checkpoints gets the T-th. Without that commit in the history (a shallow clone, no
git) record_speedup_vs_0_1 is ``n/a`` and the table says why.

Part 2, analysis growth: ``I2XRun.explain`` (which computes the intensities) on synthetic recorded
arrays (a run made with ``I2XRun.create`` and filled with ``append_checkpoint`` and
``set_prototypes``: 7x7 maps, K=32, 10 classes, confidences drifting per class), loaded fresh
with ``I2XRun.load`` before each timing so nothing is cached, as T (checkpoints) grows at N=1000
and as N (probe images) grows at T=5. The growth exponent is the least-squares slope of
log(time) on log(size).

Data: --data-dir, else $I2X_DATA_DIR, else ../shared/data when it exists (else a download).
Last line: epoch_overhead, overhead_vs_probe_pass, record_speedup_vs_0_1, analysis_growth_exponent_T,
analysis_growth_exponent_N.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, Subset

from lightning_i2x import I2XCallback, I2XRun
from lightning_i2x.prototypes import Prototypes, fit_prototypes

import _common
from demo_data import balanced_indices, load_mnist
from demo_models import SmallCNN

K, M, H, W = 32, 10, 7, 7


# -- part 1: whole fits with and without the callback --------------------------------------------
class ClockedI2X(I2XCallback):
    """I2XCallback that also notes how long each of its records took on the training thread (with
    ``async_analysis``, the default, the analysis itself runs in the background worker)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record_seconds: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        t0 = time.perf_counter()
        super().on_validation_epoch_end(trainer, pl_module)
        if not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.record_seconds.append(time.perf_counter() - t0)


def fit_overhead(args, root: Path, rounds: int, epochs: int):
    """Whole fits without (A) and with (B) I2XCallback(every_n_epochs=1), interleaved A B A B after
    an untimed warm-up pair, each from the same seed, initial weights and data order. A fit's wall
    time runs from ``trainer.fit`` to its return, which joins the background analysis: a record's
    analysis that overlaps the next epoch, or the end of fit, is counted in B, never in A."""
    train_full = load_mnist(train=True, data_dir=args.data_dir)
    test = load_mnist(train=False, data_dir=args.data_dir)
    n_train, n_val, per_class = (256, 128, 10) if args.quick else (12_000, 2000, 100)
    train = Subset(train_full, range(n_train))
    val = Subset(test, range(n_val))
    probe = Subset(test, balanced_indices(test.tensors[1], per_class).tolist())
    probe.classes = test.classes
    state = {"n": 0}

    def fit(with_callback: bool, n_epochs: int):
        state["n"] += 1
        pl.seed_everything(0, verbose=False)
        model = SmallCNN()
        i2x = ClockedI2X(probe, target_layer="features", num_prototypes=K, every_n_epochs=1, run_dir=root / f"i2x-{state['n']}")
        trainer = pl.Trainer(
            max_epochs=n_epochs, callbacks=[i2x] if with_callback else [], default_root_dir=str(root / f"fit-{state['n']}"),
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            logger=False,
        )
        loader = DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        trainer.fit(model, loader, DataLoader(val, batch_size=500))
        seconds = time.perf_counter() - t0
        if with_callback:
            if i2x.run.errors:
                raise RuntimeError(f"I2XCallback recorded errors: {i2x.run.errors}")
            if i2x.run.num_checkpoints != n_epochs:
                raise RuntimeError(f"expected {n_epochs} records, the run holds {i2x.run.num_checkpoints}")
        return seconds, i2x, model

    fit(False, 1)  # warm-up pair: data, code paths, thread pools
    fit(True, 1)
    times: dict[str, list[float]] = {"without": [], "with": []}
    records: list[float] = []
    last = None
    for r in range(rounds):
        t_a, _, _ = fit(False, epochs)
        t_b, i2x, model = fit(True, epochs)
        times["without"].append(t_a)
        times["with"].append(t_b)
        records += i2x.record_seconds
        last = (i2x, model)
        print(f"  round {r + 1}/{rounds}: without={t_a:.2f}s with={t_b:.2f}s", file=sys.stderr, flush=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "n_train": n_train, "n_val": n_val, "n_probe": len(probe), "fits": times, "epochs": epochs,
        "records": records, "peak_rss": peak_rss, "last": last,
    }


BASELINE_REF = "154769c"  # lightning-i2x 0.1.0, the last commit before the record pipeline moved out of the callback


def import_baseline(ref: str, root: Path):
    """The package as it was at git ``ref``, imported side by side under another name (its imports
    are relative), so the same phases of a record are timed in one process, old and new."""
    import importlib
    import subprocess

    dest = root / "baseline"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(_common.REPO), "archive", ref, "lightning_i2x"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "lightning_i2x").rename(dest / "lightning_i2x_baseline")
    sys.path.insert(0, str(dest))
    return importlib.import_module("lightning_i2x_baseline")


class NullWriter:
    """Takes the views and drops them: the cost measured is computing them, not disk I/O."""

    def add_scalar(self, *a, **k):
        pass

    def add_text(self, *a, **k):
        pass

    def add_custom_scalars(self, *a, **k):
        pass


def record_breakdown(part1, root: Path, repeats: int, ref: str, t_count: int):
    """The phases of one record, 0.1 against now, on the last trained model's real evidence: a run
    holding T-1 checkpoints gets the T-th (append, prototype refit, explain, scalars and text).
    Returns the rows, the 0.1 / now speed-up of the whole record (None without a 0.1 to import),
    the probe pass's seconds and why there is no baseline (or None)."""
    import subprocess

    from lightning_i2x import Recorder, probe_pass
    from lightning_i2x.record import open_run
    from lightning_i2x.viz import log_summary

    no_baseline = None
    try:
        old = import_baseline(ref, root)
        old_views = old.views
    except (subprocess.CalledProcessError, OSError, ImportError) as e:  # a shallow clone has no 0.1 to compare with
        no_baseline = f"no baseline {ref!r} in this checkout ({type(e).__name__}): a shallow clone or no git history"
        print(f"  {no_baseline}; timing this version only", file=sys.stderr)
        old = old_views = None

    i2x, model = part1["last"]
    model.eval()
    layer = i2x.run.config.target_layer
    from lightning_i2x.record import materialise_probe
    from lightning_i2x.saliency import resolve_target_layer

    images, labels, _ = materialise_probe(i2x.probe)
    target = resolve_target_layer(model, layer, images[:2], forward_fn=lambda m, x: m(x))
    if t_count < 2:
        raise ValueError(f"the breakdown needs T >= 2 checkpoints, got {t_count}")
    evidence = probe_pass(model, target.module, images, labels)
    rng = np.random.default_rng(0)
    # T distinct checkpoints: the real maps and confidences, jittered
    cams = [np.clip(evidence.cams.numpy() + rng.normal(0, 0.05, evidence.cams.shape), 0, 1).astype(np.float32) for _ in range(t_count)]
    confs = []
    for _ in range(t_count):
        c = evidence.confidences.numpy() + rng.uniform(0, 0.1, evidence.confidences.shape)
        confs.append((c / c.sum(1, keepdims=True)).astype(np.float32))
    feats = evidence.activations.permute(0, 2, 3, 1).reshape(-1, evidence.activations.shape[1]).numpy()
    names = [str(c) for c in range(M)]
    state = {"n": 0}

    def fresh_new():
        state["n"] += 1
        run = open_run(root / f"new-{state['n']}", images, labels, names, target, num_prototypes=K)
        rec = Recorder(K)
        for t in range(t_count - 1):
            run.append_checkpoint(cams[t], confs[t], epoch=t, global_step=t)
        protos, assignment = fit_prototypes(feats, K, seed=0)
        run.set_prototypes(protos, assignment, reference=t_count - 2)
        return run, rec

    def fresh_old():
        state["n"] += 1
        run = old.I2XRun.create(root / f"old-{state['n']}", labels=labels.numpy(), class_names=names, feature_shape=target.feature_shape[1:],
                                num_prototypes=K)
        for t in range(t_count - 1):
            run.append_checkpoint(cams[t], confs[t], epoch=t, global_step=t)
        protos, assignment = old.fit_prototypes(feats, K, seed=0)
        run.set_prototypes(protos, assignment, reference=t_count - 2)
        return run

    phases = {f"{v}: {p}": [] for v in ("0.1", "now") for p in ("append + refit", "explain", "scalars + text", "record total")}

    def time_old():
        run = fresh_old()
        t0 = time.perf_counter()
        index = run.append_checkpoint(cams[-1], confs[-1], epoch=t_count, global_step=t_count)
        protos, assignment, dist = old.fit_prototypes(feats, K, seed=0, previous_assignment=run.assignment().reshape(-1), return_distances=True)
        run.set_prototypes(protos, assignment, reference=index, distances=dist)
        t1 = time.perf_counter()
        expl = run.explain()
        t2 = time.perf_counter()
        old_views.log_summary(NullWriter(), run, expl, t_count, old_views.ViewOptions())
        t3 = time.perf_counter()
        for p, v in zip(("append + refit", "explain", "scalars + text", "record total"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            phases[f"0.1: {p}"].append(v)

    def time_new():
        run, rec = fresh_new()
        t0 = time.perf_counter()
        rec.append(run, evidence_t, epoch=t_count, global_step=t_count)
        t1 = time.perf_counter()
        expl = rec.explain_run(run)
        t2 = time.perf_counter()
        log_summary(NullWriter(), run, expl, t_count, i2x.views)
        t3 = time.perf_counter()
        for p, v in zip(("append + refit", "explain", "scalars + text", "record total"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            phases[f"now: {p}"].append(v)

    from lightning_i2x.record import ProbeEvidence

    evidence_t = ProbeEvidence(evidence.activations, torch.from_numpy(cams[-1]), torch.from_numpy(confs[-1]))
    for r in range(repeats + 1):  # the first round warms up both
        for fn in ((time_old, time_new) if r % 2 == 0 else (time_new, time_old)):
            if old is not None or fn is time_new:
                fn()
        if r == 0:
            for v in phases.values():
                v.clear()
    rows = []
    for p in ("append + refit", "explain", "scalars + text", "record total"):
        a, b = phases[f"0.1: {p}"], phases[f"now: {p}"]
        if not a:
            rows.append([p, "-", _common.fmt_s(_common.median(b)), "-"])
            continue
        rows.append([p, _common.fmt_s(_common.median(a)), _common.fmt_s(_common.median(b)), f"{_common.median(a) / _common.median(b):.2f}"])
    probe_t = _common.interleaved({"probe pass": lambda: probe_pass(model, target.module, images, labels)}, repeats)["probe pass"]
    rows.append(["probe pass (maps, confidences, features)", "-", _common.fmt_s(_common.median(probe_t)), "-"])
    total_old = phases["0.1: record total"]
    speedup = _common.median(total_old) / _common.median(phases["now: record total"]) if total_old else None
    return rows, speedup, _common.median(probe_t), no_baseline


# -- part 2: analysis growth --------------------------------------------------------------------
def make_run(path: Path, t_count: int, n: int, seed: int = 0) -> Path:
    """A run directory with T checkpoints of synthetic maps and confidences for N probe images."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % M
    run = I2XRun.create(path, labels=labels, class_names=[str(c) for c in range(M)], feature_shape=(H, W), num_prototypes=K)
    drift = rng.normal(0, 1, (M, M))  # each class's confidences move together, as learning groups do
    logits = rng.normal(0, 0.5, (n, M))
    for t in range(t_count):
        logits = logits + 0.3 * np.eye(M)[labels] * 3 + 0.3 * drift[labels] + rng.normal(0, 0.3, (n, M))
        conf = np.exp(logits - logits.max(1, keepdims=True))
        conf /= conf.sum(1, keepdims=True)
        run.append_checkpoint(rng.random((n, H, W), dtype=np.float32), conf.astype(np.float32), epoch=t, global_step=t)
    protos = Prototypes(rng.normal(size=(8, 64)), np.zeros(8), rng.normal(size=(K, 8)))
    run.set_prototypes(protos, rng.integers(0, K, (n, H, W)), reference=t_count - 1)
    return path


def growth(root: Path, sizes: list[tuple[int, int]], repeats: int, blas_one_thread: bool = False):
    """Per (T, N), interleaved over the sizes: seconds of a fresh explain (run just loaded, nothing
    cached), of the intensities, and of a second (cached) explain on the same loaded run."""
    paths = {s: make_run(root / f"run-T{s[0]}-N{s[1]}", *s) for s in sizes}
    I2XRun.load(paths[sizes[0]]).explain()  # warm-up
    out = {s: {"explain": [], "intensities": [], "cached": [], "explain_blas1": []} for s in sizes}
    for r in range(repeats):
        for s in sizes:
            run = I2XRun.load(paths[s])
            out[s]["explain"].append(_common.timed(run.explain))
            out[s]["cached"].append(_common.timed(run.explain))
            out[s]["intensities"].append(_common.timed(run.intensities))
            if blas_one_thread:
                run = I2XRun.load(paths[s])
                with threadpool_limits(1, user_api="blas"):
                    out[s]["explain_blas1"].append(_common.timed(run.explain))
        shown = "  ".join(f"T{s[0]}/N{s[1]}={out[s]['explain'][-1]:.2f}s" for s in sizes)
        print(f"  round {r + 1}/{repeats}: explain {shown}", file=sys.stderr, flush=True)
    return paths, out


def peak_memory(path: Path) -> int:
    """tracemalloc peak (NumPy buffers included) of a fresh load + explain."""
    tracemalloc.start()
    try:
        I2XRun.load(path).explain()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main(argv=None) -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: $I2X_DATA_DIR or ../shared/data)")
    ap.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the version the record phases are compared with")
    ap.add_argument("--fit-epochs", type=int, default=None, help="epochs of every timed fit, each with a record (default 3; --quick: 2)")
    ap.add_argument("--breakdown-checkpoints", type=int, default=None,
                    help="T of the phase breakdown: a run holding T-1 checkpoints gets the T-th (default 8; --quick: 3)")
    args = ap.parse_args(argv)
    _common.set_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    info = _common.machine()
    repeats = args.repeats or (1 if args.quick else 5)
    fit_epochs = args.fit_epochs or (2 if args.quick else 3)
    breakdown_t = args.breakdown_checkpoints or (3 if args.quick else 8)
    t_sizes = [3, 12] if args.quick else [5, 10, 20, 40]
    n_sizes = [200, 800] if args.quick else [1000, 4000, 16000]
    t_fixed_n = 200 if args.quick else 1000
    n_fixed_t = 3 if args.quick else 5

    with tempfile.TemporaryDirectory(prefix="i2x-bench-") as tmp:
        root = Path(tmp)
        print("part 1: whole fits with and without the callback", file=sys.stderr, flush=True)
        part1 = fit_overhead(args, root, repeats, fit_epochs)
        ew, ewo = part1["fits"]["with"], part1["fits"]["without"]
        paired = [b - a for a, b in zip(ewo, ew)]  # fit with - fit without, per round (same seed, data, order)
        overhead = _common.median(ew) / _common.median(ewo) - 1.0
        rec = part1["records"]
        breakdown, record_speedup, probe_seconds, no_baseline = record_breakdown(
            part1, root, 2 if args.quick else 7, args.baseline_ref, breakdown_t)
        per_record = _common.median(paired) / fit_epochs
        overhead_vs_probe = per_record / probe_seconds

        print("part 2: analysis growth in T", file=sys.stderr, flush=True)
        t_cfg = [(t, t_fixed_n) for t in t_sizes]
        t_paths, t_res = growth(root / "T", t_cfg, 1 if args.quick else 3, blas_one_thread=True)
        print("part 2: analysis growth in N", file=sys.stderr, flush=True)
        n_cfg = [(n_fixed_t, n) for n in n_sizes]
        n_paths, n_res = growth(root / "N", n_cfg, 1 if args.quick else 2)
        mem_t = peak_memory(t_paths[t_cfg[-1]])
        mem_n = peak_memory(n_paths[n_cfg[-1]])

    med = lambda res, s, key: _common.median(res[s][key])  # noqa: E731
    exp_t = _common.loglog_slope([s[0] for s in t_cfg], [med(t_res, s, "explain") for s in t_cfg])
    exp_n = _common.loglog_slope([s[1] for s in n_cfg], [med(n_res, s, "explain") for s in n_cfg])
    exp_t_blas1 = _common.loglog_slope([s[0] for s in t_cfg], [med(t_res, s, "explain_blas1") for s in t_cfg])

    fit_rows = [
        ["without the callback", len(ewo), _common.fmt_s(_common.median(ewo)), _common.spread(ewo), "-"],
        [f"with `I2XCallback` ({fit_epochs} records)", len(ew), _common.fmt_s(_common.median(ew)), _common.spread(ew),
         f"{_common.fmt_s(_common.median(rec))} ({_common.spread(rec)})"],
    ]
    t_rows = [["T", s[0], s[1], _common.fmt_s(med(t_res, s, "explain")), _common.spread(t_res[s]["explain"]),
               _common.fmt_s(med(t_res, s, "explain_blas1")), _common.fmt_s(med(t_res, s, "intensities")),
               _common.fmt_s(med(t_res, s, "cached"))] for s in t_cfg]
    n_rows = [["N", s[0], s[1], _common.fmt_s(med(n_res, s, "explain")), _common.spread(n_res[s]["explain"]), "-",
               _common.fmt_s(med(n_res, s, "intensities")), _common.fmt_s(med(n_res, s, "cached"))] for s in n_cfg]
    subset = f"a {part1['n_train']}-image subset of the MNIST training set"
    body = "\n".join([
        "## Fit overhead",
        "",
        f"SmallCNN on {subset}, batch 128, validation on {part1['n_val']} test images once per epoch, {fit_epochs} epochs per "
        f"fit. Whole fits without the callback (A) and with `I2XCallback(every_n_epochs=1)` (B, a record at every "
        f"validation), interleaved A B A B, {repeats} of each after an untimed warm-up pair, every fit from the same seed, "
        "initial weights and data order. A fit's time runs from `trainer.fit` to its return, which joins the background "
        "analysis (`async_analysis=True`, the default): a record's analysis that overlaps the next epoch is counted with "
        "the callback, not without it. A record is the full per-checkpoint work: probe pass over "
        f"{part1['n_probe']} test images at `features` (64x7x7), prototypes (K={K}, matched to the previous ids), "
        "`I2XRun.explain` and the TensorBoard views with the callback's defaults (scalars and text at every record, images "
        "when `view_time_budget` allows).",
        "",
        _common.table(["fit", "fits", "median fit", "min-max", "training-thread time per record"], fit_rows),
        "",
        f"- overhead_vs_probe_pass = median over rounds of (fit with - fit without) / {fit_epochs} records / probe-pass "
        f"time = {_common.fmt_s(per_record)} / {_common.fmt_s(probe_seconds)} = {overhead_vs_probe:.2f}: what a record adds "
        "to the wall time of training, in units of the probe pass it cannot avoid.",
        f"- epoch_overhead = median fit with / median fit without - 1 = {overhead:.3f}: what recording at every "
        f"validation adds to training (paired rounds: {', '.join(f'{b / a - 1:+.3f}' for a, b in zip(ewo, ew))}).",
        f"- peak resident memory of the process after training: {_common.fmt_bytes(part1['peak_rss'])}.",
        "",
        f"One record's phases, lightning-i2x 0.1 (git `{args.baseline_ref}`, imported side by side) against this "
        f"version, on the last trained model's probe evidence: a run holding T-1 = {breakdown_t - 1} checkpoints gets the "
        f"T-th (T = {breakdown_t}: append, prototype refit, `explain`, then the scalars and text of the views into a "
        "writer that drops them). Medians of interleaved rounds after a warm-up:",
        "",
        *([f"- record_speedup_vs_0_1 = n/a: {no_baseline}.", ""] if no_baseline else []),
        _common.table(["phase", "0.1", "now", "0.1 / now"], breakdown),
        "",
        "## Analysis growth",
        "",
        f"`I2XRun.explain` (intensities, HDBSCAN learning groups per interval, ridge per interval and group, pair "
        f"flips) on a run loaded fresh, so nothing is cached; synthetic arrays, 7x7 maps, K={K}, {M} classes. "
        "'cached' is a second `explain` on the same loaded run (HDBSCAN labels reused), the floor of what the "
        "callback pays per checkpoint, which also clusters the one new interval.",
        "",
        _common.table(["series", "T", "N", "explain (fresh)", "min-max", "explain, BLAS 1 thread", "intensities", "explain (cached)"], t_rows + n_rows),
        "",
        f"- growth exponent in T (N={t_fixed_n}): {exp_t:.2f} (with BLAS limited to one thread: {exp_t_blas1:.2f}); "
        f"in N (T={n_fixed_t}): {exp_n:.2f}.",
        f"- peak traced memory (tracemalloc, NumPy buffers included) of load + explain: {_common.fmt_bytes(mem_t)} at "
        f"T={t_cfg[-1][0]}, N={t_cfg[-1][1]}; {_common.fmt_bytes(mem_n)} at T={n_cfg[-1][0]}, N={n_cfg[-1][1]}.",
    ])
    _common.report(
        "I2XCallback overhead and analysis growth",
        body,
        {"epoch_overhead": overhead, "overhead_vs_probe_pass": overhead_vs_probe, "record_speedup_vs_0_1": record_speedup, "analysis_growth_exponent_T": exp_t,
         "analysis_growth_exponent_N": exp_n},
        args.out, info, args.quick,
    )


if __name__ == "__main__":
    main()
