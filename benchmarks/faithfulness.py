"""How faithful are the saliency maps I2X stands on? Deletion and insertion AUC of GradCAM,
GradCAM++, EigenCAM, I-GOS and iGOS++ at their authors' settings, and a random order, on two
trained models, with the paired difference iGOS++ - GradCAM and its 95 % interval.

    python benchmarks/faithfulness.py [--quick] [--out FILE] [--repeats R] [--threads N]
        [--images N] [--igos-images N] [--cifar-epochs E]

Protocol (CPU, everything seeded):

  models   SmallCNN (examples/demo_models.py, target layer ``features``, 7x7 maps) trained 1 epoch
           (Adam at its default lr, batch 32, torch seed 0) on 12,000 MNIST training images
           (1,200 a class, ``balanced_indices`` seed 0); torchvision ResNet-18 adapted to 32 px
           (``_common.resnet18_32px``; layer3 gives 4x4 maps and is the target layer: layer4's
           2x2 is nearly degenerate) trained by ``_common.train_cifar_resnet18`` (flips and crops,
           Adam + one-cycle, --cifar-epochs 15, seed 0) on all 5,000 CIFAR-10 subset training
           images.
  images   the first --images (100) correctly classified test images in a seeded (0) permutation
           of the test set; the target is the label. iGOS++ and the cheap methods run on all of
           them, I-GOS on the first --igos-images (32: it is not what the goal is about).
  maps     GradCAM (native_gradcam), GradCAM++ and EigenCAM (pytorch-grad-cam via library_cam) at
           the target layer's resolution; I-GOS and iGOS++ (igos_maps) at the settings of
           ``IGOSOptions()``, the authors' (khorrams/IGOS_pp's args.py: 15 iterations, 20 path
           points, L1 1, L2 20 at 28x28 masks, noise 0.2 at ImageNet scale, line search):
           masks at 4x the layer's map side (MNIST 28x28, CIFAR 16x16; the authors' 28x28 over a
           7x7 map), L2 scaled to the mask side, their effective blur as the baseline (sd 0.065 of
           the side), noise relative to each image's value range; random = a seeded random pixel
           order (lightning_i2x.measures.random_baseline, seed 0).
  metric   lightning_i2x.measures.deletion_insertion, 64 steps, target softmax probability,
           trapezoid AUC over the pixel fraction, with three fills: the optimiser's own baseline
           (the authors' blur, the headline), the strong blur (sd 0.22 of the side: the metric's
           default, what iGOS++'s code uses at 224 px) and zero (the normalised data's mean).
  paired   per model and fill: iGOS++ - GradCAM per image, mean with a 95 % t interval (and
           the images where iGOS++ wins); the goal (the authors' ImageNet finding) is met when the
           interval excludes 0 in iGOS++'s favour on deletion and on insertion, on both models.
  cost     seconds per image of each method's maps, and in probe passes (over one native GradCAM
           forward + backward of the same images).
  speed    the batched metric against a per-image, per-step loop (one forward per perturbed image)
           on the same maps (4 MNIST images, 1 CIFAR image: the loop is slow), checked equal to
           1e-6 (the script exits non-zero when they differ by more), timed with one warm-up round
           and the median of at least 3 timed rounds (--repeats, default 3); and the metric's cost
           in probe passes.

Last line: igos_pp_vs_gradcam_deletion and igos_pp_vs_gradcam_insertion (ratio of mean AUCs under
the optimiser's baseline, the worse of the two models: the max for deletion, where lower is better,
the min for insertion), igos_pp_minus_gradcam_deletion_ci_high (the largest upper 95 % bound of the
paired deletion difference over models: below 0 means iGOS++ wins on both) and
igos_pp_minus_gradcam_insertion_ci_low (the smallest lower bound of the insertion difference: above 0
means it wins on both), min_gap_over_random (the smallest (insertion - deletion) of a method minus
random's, over methods, models and fills: above 0 means every method beats chance),
igos_pp_probe_passes (the larger cost of iGOS++ per image in probe passes), batched_vs_loop (min over
models of loop time / batched time) and metric_probe_passes (max).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from scipy import stats

from lightning_i2x.measures import FaithfulnessResult, deletion_insertion, pixel_ranks, random_baseline
from lightning_i2x.options import IGOSOptions
from lightning_i2x.perturb import default_blur_sigma, fill_values, hiding_sigma
from lightning_i2x.saliency import AUTHORS_BLUR_FRACTION, default_mask_side, igos_maps, library_cam, native_gradcam

import _common
from demo_data import balanced_indices, load_cifar10_subset, load_mnist
from demo_models import SmallCNN

STEPS = 64
LOOP_TOLERANCE = 1e-6  # batched curves vs the per-image loop's, max abs difference; above it the script fails
MNIST_BATCH = 32  # 1 epoch on 12,000 images, seed 0, this loop: test accuracy 0.66 at batch 128, 0.88 at 32
QUICK_TEST = {"mnist": 1000, "cifar": 200}  # --quick: accuracy and the correctly classified images from the first test images only
QUICK_IGOS = dict(iterations=2, ig_iter=3)
CHEAP = ["gradcam", "gradcam++", "eigencam"]
IGOS = ["igos", "igos++"]
FILL_NAMES = ("optimiser's baseline (authors' blur)", "strong blur (0.22 of the side)", "zero")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(model, x, y, epochs, lr, seed=0, batch=128):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for s in range(0, x.shape[0], batch):
            idx = perm[s : s + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        return float(torch.cat([model(x[s : s + 500]).argmax(1) for s in range(0, x.shape[0], 500)]).eq(y).float().mean())


def quick_test(quick: bool, xt: torch.Tensor) -> str:
    return f" (--quick: accuracy on the first {xt.shape[0]} test images)" if quick else ""


def correct_subset(model, x, y, n, seed=0):
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pred = torch.cat([model(x[perm[s : s + 500]]).argmax(1) for s in range(0, x.shape[0], 500)])
    keep = perm[pred.eq(y[perm])][:n]
    return x[keep], y[keep]


def setups(args):
    quick = args.quick
    n_images = 8 if quick else args.images
    t0 = time.perf_counter()
    mn_train = load_mnist(True)
    idx = balanced_indices(mn_train.tensors[1], 100 if quick else 1200, seed=0)
    torch.manual_seed(0)
    cnn = SmallCNN()
    cnn = train(cnn, mn_train.tensors[0][idx], mn_train.tensors[1][idx], epochs=1, lr=cnn.hparams.lr, batch=MNIST_BATCH)
    xt, yt = load_mnist(False).tensors
    if quick:  # the forwards over all 10k test images were most of a --quick run
        xt, yt = xt[:QUICK_TEST["mnist"]], yt[:QUICK_TEST["mnist"]]
    acc = accuracy(cnn, xt, yt)
    x, y = correct_subset(cnn, xt, yt, n_images)
    log(f"SmallCNN trained in {time.perf_counter() - t0:.0f} s, test accuracy {acc:.3f}")
    yield dict(name="SmallCNN / MNIST", model=cnn, layer=cnn.features, x=x, y=y, acc=acc, loop_images=1 if quick else 4,
               train=f"1 epoch on {len(idx)} images (Adam {cnn.hparams.lr:g}, batch {MNIST_BATCH})" + quick_test(quick, xt))

    t0 = time.perf_counter()
    xc, yc = load_cifar10_subset(True).tensors
    epochs = 1 if quick else args.cifar_epochs
    if quick:
        xc, yc = xc[:128], yc[:128]
    net = _common.train_cifar_resnet18(xc, yc, epochs=epochs, seed=0)
    xt, yt = load_cifar10_subset(False).tensors
    if quick:
        xt, yt = xt[:QUICK_TEST["cifar"]], yt[:QUICK_TEST["cifar"]]
    acc = accuracy(net, xt, yt)
    x, y = correct_subset(net, xt, yt, 3 if quick else n_images)
    log(f"ResNet-18 trained in {time.perf_counter() - t0:.0f} s, test accuracy {acc:.3f}")
    yield dict(name="ResNet-18 / CIFAR-10 subset", model=net, layer=net.layer3, x=x, y=y, acc=acc, loop_images=1,
               train=f"`_common.train_cifar_resnet18`, {epochs} epoch(s) on {xc.shape[0]} images" + quick_test(quick, xt))


def igos_settings(quick: bool) -> dict:
    """``igos_maps``'s keywords at ``IGOSOptions()``'s defaults (the mask side is set per model)."""
    kw = IGOSOptions().igos_kwargs()
    kw.pop("mask_size")
    return {**kw, **(QUICK_IGOS if quick else {})}


def method_maps(name, case, x, y, quick):
    m, layer = case["model"], case["layer"]
    if name == "gradcam":
        return native_gradcam(m, layer, x, y).cams
    if name in ("gradcam++", "eigencam"):
        return library_cam(m, layer, x, y, method=name).cams
    side = default_mask_side(case["map_side"], x.shape[-1])
    return igos_maps(m, x, y, method=name, size=(side, side), **igos_settings(quick))


def fills(x: torch.Tensor) -> dict[str, dict]:
    """The metric's three fills: the optimiser's own baseline, the strong blur, zero."""
    side = tuple(x.shape[-2:])
    return {FILL_NAMES[0]: dict(fill="blur", sigma=hiding_sigma(side, AUTHORS_BLUR_FRACTION)),
            FILL_NAMES[1]: dict(fill="blur", sigma=default_blur_sigma(side)),
            FILL_NAMES[2]: dict(fill="baseline", baseline=0.0)}


def mean_sd(v: torch.Tensor) -> str:
    return f"{v.mean():.3f} ± {v.std():.3f}"


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided ``level`` Student-t interval of the paired differences ``d``."""
    d = np.asarray(d, dtype=np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return mean, mean - half, mean + half


def subset(r: FaithfulnessResult, n: int) -> FaithfulnessResult:
    return FaithfulnessResult(r.fractions, r.deletion_curves[:n], r.insertion_curves[:n], r.deletion_auc[:n], r.insertion_auc[:n])


def loop_metric(model, x, y, maps, steps=STEPS):
    """The brute-force reference: one perturbed image, one forward at a time (strong-blur fill)."""
    h, w = x.shape[-2:]
    n = h * w
    sigma = default_blur_sigma((h, w))
    dele, ins = [], []
    with torch.no_grad():
        for b in range(x.shape[0]):
            xi = x[b : b + 1]
            filled = fill_values(xi, "blur", sigma=sigma)
            rank = pixel_ranks(maps[b : b + 1], (h, w))[0]
            d_row, i_row = [], []
            for k in range(steps + 1):
                hidden = rank < int(np.floor(k * n / steps + 0.5))
                d_row.append(torch.softmax(model(torch.where(hidden, filled, xi)), 1)[0, int(y[b])].item())
                i_row.append(torch.softmax(model(torch.where(hidden, xi, filled)), 1)[0, int(y[b])].item())
            dele.append(d_row)
            ins.append(i_row)
    return np.array(dele), np.array(ins)


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--images", type=int, default=100, help="correctly classified test images per model (default 100; --quick 8 / 3)")
    ap.add_argument("--igos-images", type=int, default=32, help="the first N of them I-GOS runs on (default 32; iGOS++ runs on all)")
    ap.add_argument("--cifar-epochs", type=int, default=15, help="training epochs of the CIFAR ResNet-18 (default 15; --quick 1)")
    args = ap.parse_args()
    _common.set_threads(args.threads)
    info = _common.machine()
    repeats = max(3, args.repeats or 3)  # timed rounds of the speed comparison, after one warm-up round
    rows, paired_rows, cost_rows, speed_rows, verdicts, summaries = [], [], [], [], [], []
    dels, inss, del_hi, ins_lo, igos_cost, loop_ratio, probe_cost, gaps = [], [], [], [], [], [], [], []
    for case in setups(args):
        model, x, y = case["model"], case["x"], case["y"]
        n = x.shape[0]
        n_igos = min(2 if args.quick else args.igos_images, n)
        case["map_side"] = native_gradcam(model, case["layer"], x[:1], y[:1]).cams.shape[-1]
        maps, seconds = {}, {}
        for name in CHEAP + IGOS:
            xs, ys = (x[:n_igos], y[:n_igos]) if name == "igos" else (x, y)
            t0 = time.perf_counter()
            maps[name] = method_maps(name, case, xs, ys, args.quick)
            seconds[name] = (time.perf_counter() - t0) / xs.shape[0]
            log(f"{case['name']}: {name} maps {tuple(maps[name].shape[-2:])} in {seconds[name]:.3f} s / image")
        t_pass = _common.median(_common.interleaved({"probe pass": lambda: native_gradcam(model, case["layer"], x, y)}, repeats,
                                                     log=False)["probe pass"]) / n
        for name in CHEAP + IGOS:
            cost_rows.append([case["name"], name, tuple(maps[name].shape[-2:]), n_igos if name == "igos" else n,
                              _common.fmt_s(seconds[name]), f"{seconds[name] / t_pass:.0f}"])
        igos_cost.append(seconds["igos++"] / t_pass)

        for f_i, (fill_name, fill_kw) in enumerate(fills(x).items()):
            res = {name: deletion_insertion(model, x[: len(m)], y[: len(m)], m, steps=STEPS, **fill_kw) for name, m in maps.items()}
            res["random"] = random_baseline(model, x, y, seed=0, steps=STEPS, **fill_kw)
            for name, r in res.items():
                rows.append([case["name"], fill_name, name, len(r.deletion_auc), mean_sd(r.deletion_auc), mean_sd(r.insertion_auc),
                             f"{r.mean_insertion_auc - r.mean_deletion_auc:.3f}"])
                if name != "random":
                    rr = subset(res["random"], len(r.deletion_auc)) if name == "igos" else res["random"]
                    gaps.append(r.mean_insertion_auc - r.mean_deletion_auc - (rr.mean_insertion_auc - rr.mean_deletion_auc))
            g, p = res["gradcam"], res["igos++"]
            dd = (p.deletion_auc - g.deletion_auc).numpy()
            di = (p.insertion_auc - g.insertion_auc).numpy()
            (md, lo_d, hi_d), (mi, lo_i, hi_i) = t_interval(dd), t_interval(di)
            won = hi_d < 0 and lo_i > 0
            paired_rows.append([case["name"], fill_name, n, f"{md:+.4f} [{lo_d:+.4f}, {hi_d:+.4f}]", f"{int((dd < 0).sum())}/{n}",
                                f"{mi:+.4f} [{lo_i:+.4f}, {hi_i:+.4f}]", f"{int((di > 0).sum())}/{n}", "yes" if won else "no"])
            if f_i == 0:  # the headline: the optimiser's own baseline
                dels.append(p.mean_deletion_auc / g.mean_deletion_auc)
                inss.append(p.mean_insertion_auc / g.mean_insertion_auc)
                del_hi.append(hi_d)
                ins_lo.append(lo_i)
                verdicts.append(f"{case['name']}: iGOS++ - GradCAM deletion {md:+.4f} [{lo_d:+.4f}, {hi_d:+.4f}], insertion "
                                f"{mi:+.4f} [{lo_i:+.4f}, {hi_i:+.4f}] under the optimiser's baseline: the goal is "
                                + ("met" if won else "not met"))
            log(f"{case['name']} / {fill_name}: d_del {md:+.4f} [{lo_d:+.4f}, {hi_d:+.4f}], d_ins {mi:+.4f} [{lo_i:+.4f}, {hi_i:+.4f}]")

        # batched metric against the loop, on the same GradCAM maps; and its cost in probe passes
        gm = maps["gradcam"]
        sl = slice(0, min(n, case["loop_images"]))
        batched = deletion_insertion(model, x[sl], y[sl], gm[sl], steps=STEPS)
        d_loop, i_loop = loop_metric(model, x[sl], y[sl], gm[sl])
        diff = max(np.abs(batched.deletion_curves.numpy() - d_loop).max(), np.abs(batched.insertion_curves.numpy() - i_loop).max())
        if not diff <= LOOP_TOLERANCE:  # NaN fails too
            raise SystemExit(f"{case['name']}: the batched metric differs from the per-image loop by {diff:.3g} "
                             f"(> {LOOP_TOLERANCE:g}): the claim 'batched equals the loop' does not hold")
        times = _common.interleaved(
            {
                "batched": lambda: deletion_insertion(model, x[sl], y[sl], gm[sl], steps=STEPS),
                "loop": lambda: loop_metric(model, x[sl], y[sl], gm[sl]),
                "probe pass": lambda: native_gradcam(model, case["layer"], x[sl], y[sl]),
            },
            repeats,
            warmup=1,
        )
        tb, tl, tp = (_common.median(times[k]) for k in ("batched", "loop", "probe pass"))
        loop_ratio.append(tl / tb)
        probe_cost.append(tb / tp)
        speed_rows.append([case["name"], sl.stop, _common.fmt_s(tb), _common.fmt_s(tl), f"{tl / tb:.1f}x", f"{diff:.1e}",
                           _common.fmt_s(tp), f"{tb / tp:.0f}"])
        kw = igos_settings(args.quick)
        side = default_mask_side(case["map_side"], x.shape[-1])
        summaries.append(f"{case['name']}: {case['train']}, test accuracy {case['acc']:.3f}; {n} correctly classified test images"
                         f" (I-GOS on the first {n_igos}); GradCAM maps {case['map_side']}x{case['map_side']}, I-GOS / iGOS++ masks"
                         f" {side}x{side}, iterations={kw['iterations']}, ig_iter={kw['ig_iter']}" + (" (--quick)" if args.quick else ""))

    header = ["model / data", "fill", "method", "images", "deletion AUC", "insertion AUC", "ins - del"]
    body = "\n".join(
        [
            "Models and images:",
            "",
            *[f"- {c}" for c in summaries],
            "",
            "iGOS++ minus GradCAM on the same images, paired: mean [95 % t interval]; wins = images where iGOS++ has the lower"
            " deletion / higher insertion AUC; goal met = the interval excludes 0 in iGOS++'s favour on both:",
            "",
            _common.table(["model / data", "fill", "images", "Δ deletion AUC", "iGOS++ wins", "Δ insertion AUC", "iGOS++ wins",
                           "goal met"], paired_rows),
            "",
            *[f"- {v}" for v in verdicts],
            "",
            f"Deletion (lower = more faithful) and insertion (higher) AUC, mean ± sd over images, {STEPS} steps:",
            "",
            _common.table(header, rows),
            "",
            "Cost of the maps: seconds per image (this machine, idle) and in probe passes (one native GradCAM forward + backward"
            " per image, median of interleaved rounds):",
            "",
            _common.table(["model / data", "method", "map size", "images", "time / image", "probe passes / image"], cost_rows),
            "",
            f"Batched metric against a per-image, per-step loop on the same GradCAM maps (median of {repeats} timed rounds after a"
            f" warm-up round; the curves checked equal to {LOOP_TOLERANCE:g}, else the script fails), and the"
            " metric's cost in probe passes (one probe pass = native GradCAM forward + backward over the same images):",
            "",
            _common.table(["model / data", "images", "batched", "loop", "loop / batched", "max abs diff", "probe pass", "metric / probe pass"], speed_rows),
            "",
            "Published anchors: the iGOS++ paper (Khorram, Lawson, Li, ACM CHIL 2021) and I-GOS (Qi, Khorram, Li, AAAI 2020) report"
            " deletion/insertion on ImageNet validation images with torchvision ResNet-50 and VGG-19 at 224 px (masks 28x28,"
            " blurred baseline), where iGOS++ has the lowest deletion and highest insertion AUC of the methods compared, GradCAM"
            " included. Their table values could not be retrieved offline for this run and are not quoted here; ImageNet models"
            " at 224 px and these small 28/32 px models are not comparable in absolute terms anyway.",
        ]
    )
    ratios = {
        "igos_pp_vs_gradcam_deletion": max(dels), "igos_pp_vs_gradcam_insertion": min(inss),
        "igos_pp_minus_gradcam_deletion_ci_high": max(del_hi), "igos_pp_minus_gradcam_insertion_ci_low": min(ins_lo),
        "min_gap_over_random": min(gaps), "igos_pp_probe_passes": max(igos_cost),
        "batched_vs_loop": min(loop_ratio), "metric_probe_passes": max(probe_cost),
    }
    _common.report("Deletion / insertion faithfulness of the saliency maps", body, ratios, args.out, info, args.quick)


if __name__ == "__main__":
    main()
