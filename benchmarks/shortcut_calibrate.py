"""Calibrating the shortcut-suspect rule (not a final benchmark): does ``suspect_prototypes`` find
the planted swatch of Decoy MNIST / Decoy Fashion-MNIST without ground truth, and flag nothing on
models trained on the clean data? Optionally (--rrr) the RRR oracle on Decoy MNIST.

    python benchmarks/shortcut_calibrate.py [--datasets mnist fashion-mnist] [--seeds 0 1]
        [--train-size 10000] [--epochs 2] [--records-per-epoch 4] [--probe-size 500] [--test-size N]
        [--save-dir DIR] [--from-saved] [--rrr] [--quick] [--out FILE]

Protocol, per data set, seed and variant (decoy / clean): ``SmallCNN`` trained on a seeded subset
of --train-size training images for --epochs, ``I2XCallback`` attached (target layer
``features``, 32 prototypes) recording --records-per-epoch times an epoch (``val_check_interval``)
on a probe of --probe-size held-out *training-split* images (decoy variant: label-coded swatches,
the training distribution). Then ``prototype_reliance`` on the probe with the run's assignment, and
``suspect_prototypes`` on what the run holds. Evaluation only (the rule never sees it): a suspect
"lies on the swatch" in class c when most of its locations in class-c probe images are swatch cells
(the feature location whose pixel block the swatch covers); *discovery* for (seed, class) = some
suspect lies on the swatch in class c; *swatch coverage* = share of probe images whose swatch cell
belongs to a suspect. Accuracy on the decoy test split (random shades) shows how much the model
took the shortcut; the clean model's is the ceiling.

--save-dir keeps each run's arrays (npz), so --from-saved re-evaluates the rule with other
thresholds without training again.

RRR oracle (--rrr, Decoy MNIST only): the decoy model fine-tuned --rrr-epochs with RRR's input
gradient penalty on the TRUE swatch masks (Ross, Hughes and Doshi-Velez 2017), weight from
``balance_weight`` on the first batch times --rrr-ratio. Anchors from the RRR authors' notebook: an
MLP reaches 51.6 % decoy-test accuracy trained plainly and 96.1 % with RRR; a plainly trained CNN
about 60 %.
"""

from __future__ import annotations

import copy
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_i2x import I2XCallback, PrototypeOptions, Reliance
from lightning_i2x.analysis import suspect_prototypes
from lightning_i2x.finetune import balance_weight, input_gradient_penalty
from lightning_i2x.measures import prototype_reliance

import _common  # puts the repository and examples/ on sys.path
from decoy_data import load_decoy
from demo_data import load_mnist
from demo_models import SmallCNN

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")
warnings.filterwarnings("ignore", ".*val_check_interval.*")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

K = 32


def split(seed: int, train_size: int, probe_size: int, val_size: int, n: int = 60000):
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return perm[:train_size], perm[train_size : train_size + probe_size], perm[train_size + probe_size : train_size + probe_size + val_size]


def data(name: str, decoy: bool, seed: int, sizes, test_size: int | None = None):
    tr, pr, va = split(seed, *sizes)
    if decoy:
        train, _ = load_decoy(True, name=name, seed=seed, indices=tr)
        probe, probe_masks = load_decoy(True, name=name, seed=seed + 1000, indices=pr)
        val, _ = load_decoy(True, name=name, seed=seed + 2000, indices=va)
    else:
        full = load_mnist(True, name=name)
        x, y = full.tensors
        train, probe, val = (TensorDataset(x[i], y[i]) for i in (tr, pr, va))
        # the swatch masks the probe *would* have: where the decoy run's swatch cells are, for
        # checking that clean suspects are not merely sitting in corners
        _, probe_masks = load_decoy(True, name=name, seed=seed + 1000, indices=pr)
    test, test_masks = load_decoy(False, name=name, seed=seed + 3000, indices=None if test_size is None else np.arange(test_size))
    return train, probe, probe_masks, val, test, test_masks


@torch.no_grad()
def accuracy(model, ds: TensorDataset) -> float:
    model.eval()
    x, y = ds.tensors
    pred = torch.cat([model(x[s : s + 1000]).argmax(1) for s in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def swatch_cells(masks: np.ndarray, feature_shape) -> np.ndarray:
    """(N, h, w) bool: locations whose pixel block is at least half swatch."""
    n, big_h, big_w = masks.shape
    h, w = feature_shape
    t = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
    return (F.adaptive_avg_pool2d(t, (h, w))[:, 0] >= 0.5).numpy()


def train_one(name, decoy, seed, args, workdir: Path):
    sizes = (args.train_size, args.probe_size, args.val_size)
    train, probe, probe_masks, val, test, test_masks = data(name, decoy, seed, sizes, args.test_size)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = SmallCNN()
    cb = I2XCallback(probe=probe.tensors, target_layer="features", num_prototypes=K, run_dir=workdir / f"{name}-{decoy}-{seed}",
                     views=False, prototypes=PrototypeOptions(seed=seed))
    steps = -(-len(train) // args.batch_size)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                         val_check_interval=max(1, steps // args.records_per_epoch), num_sanity_val_steps=0)
    t0 = time.perf_counter()
    trainer.fit(model, DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
                DataLoader(val, batch_size=500))
    t_train = time.perf_counter() - t0
    run = cb.run
    x, y = probe.tensors
    t0 = time.perf_counter()
    rel = prototype_reliance(model, x, y, run.assignment(), K, n_random=args.n_random, seed=seed, num_classes=10)
    t_rel = time.perf_counter() - t0
    # cost of one probe pass, for the reliance cost in probe passes
    from lightning_i2x.saliency import probe_batches
    t_probe = []
    for _ in range(2):  # the first is a warm-up
        t0 = time.perf_counter()
        for _ in probe_batches(model, model.features, x, y, batch_size=256):
            pass
        t_probe.append(time.perf_counter() - t0)
    t_probe = t_probe[-1]
    arrays = dict(
        assignment=run.assignment(), intensities=run.intensities(), confidences=run.confidences(), labels=y.numpy(),
        swatch=swatch_cells(probe_masks, run.feature_shape), acc_decoy_test=accuracy(model, test),
        acc_val=accuracy(model, val), t_train=t_train, t_rel=t_rel, t_probe=t_probe,
        **{f"rel_{k}": v for k, v in rel.to_arrays().items()},
    )
    return model, arrays, (train, test, test_masks)


def evaluate(arrays, **rule_kwargs):
    rel = Reliance.from_arrays({k[4:]: v for k, v in arrays.items() if k.startswith("rel_")})
    sus = suspect_prototypes(rel, arrays["assignment"], arrays["labels"], intensities=arrays["intensities"],
                             confidences=arrays["confidences"], num_prototypes=K, **rule_kwargs)
    a, labels, sw = arrays["assignment"], arrays["labels"], arrays["swatch"]
    found, on = [], {}
    for c in range(10):
        ac, sc = a[labels == c], sw[labels == c]
        hit = False
        for k in sus:
            locs = ac == k
            if locs.sum() and (locs & sc).sum() / locs.sum() > 0.5:
                hit = True
        found.append(hit)
    for k in sus:
        locs = a == k
        on[k] = float((locs & sw).sum() / max(1, locs.sum()))
    swatch_proto = a[sw]  # prototype of each swatch cell
    coverage = float(np.isin(swatch_proto, sus).mean()) if swatch_proto.size else 0.0
    return sus, on, found, coverage


def rrr_finetune(model, train, masks, args, seed):
    """Fine-tune a copy with RRR's penalty on the given masks (a plain loop: the term is
    ``input_gradient_penalty``, which a LightningModule's training_step would call the same way)."""
    m = copy.deepcopy(model)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=args.rrr_lr)
    x, y = train.tensors
    mk = torch.from_numpy(masks)
    g = torch.Generator().manual_seed(seed)
    lam = None
    for _ in range(args.rrr_epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), args.batch_size):
            i = perm[s : s + args.batch_size]
            pen, logits = input_gradient_penalty(m, x[i], y[i], mk[i], return_logits=True)
            ce = F.cross_entropy(logits, y[i])
            if lam is None:
                lam = balance_weight(ce, pen, ratio=args.rrr_ratio)
            opt.zero_grad()
            (ce + lam * pen).backward()
            opt.step()
    return m, lam


def main() -> None:
    machine = _common.machine()  # at the start: it records the load average the run began under
    ap = _common.parser(__doc__)
    ap.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--probe-size", type=int, default=500)
    ap.add_argument("--val-size", type=int, default=1000)
    ap.add_argument("--test-size", type=int, default=None, help="first N decoy test images (default: all 10,000; --quick: 1000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--records-per-epoch", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-random", type=int, default=4)
    ap.add_argument("--save-dir", default=None)
    ap.add_argument("--from-saved", action="store_true")
    ap.add_argument("--rrr", action="store_true")
    ap.add_argument("--rrr-epochs", type=int, default=1)
    ap.add_argument("--rrr-ratio", type=float, default=1.0)
    ap.add_argument("--rrr-lr", type=float, default=1e-3)
    args = ap.parse_args()
    if args.quick:
        args.datasets, args.seeds, args.train_size, args.probe_size, args.val_size, args.test_size = ["mnist"], [0], 600, 100, 200, 1000
        args.epochs, args.records_per_epoch, args.n_random = 1, 2, 1
    _common.set_threads(args.threads)
    save = Path(args.save_dir) if args.save_dir else None
    rows, rrr_rows = [], []
    disc = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, name, decoy in [(s, n, d) for s in args.seeds for n in args.datasets for d in (True, False)]:
                    f = save / f"{name}-{'decoy' if decoy else 'clean'}-{seed}.npz" if save else None
                    if args.from_saved:
                        if not f.exists():
                            continue
                        arrays = dict(np.load(f))
                    else:
                        model, arrays, (train, test, _) = train_one(name, decoy, seed, args, Path(tmp))
                        if f:
                            f.parent.mkdir(parents=True, exist_ok=True)
                            np.savez(f, **arrays)
                        if args.rrr and decoy and name == "mnist":
                            _, train_masks = load_decoy(True, name=name, seed=seed, indices=split(seed, args.train_size, args.probe_size, args.val_size)[0])
                            t0 = time.perf_counter()
                            tuned, lam = rrr_finetune(model, train, train_masks, args, seed)
                            rrr_rows.append([seed, f"{100 * float(arrays['acc_decoy_test']):.1f} %", f"{100 * accuracy(tuned, test):.1f} %",
                                             f"{lam:.3g}", f"{time.perf_counter() - t0:.0f} s"])
                    sus, on, found, coverage = evaluate(arrays)
                    if decoy:
                        disc.setdefault(name, []).extend(found)
                    false = [k for k in sus if on[k] <= 0.5] if decoy else list(sus)
                    cost = (float(arrays["t_rel"]) / float(arrays["t_probe"]))
                    rows.append([name, "decoy" if decoy else "clean", seed, str(sus), ", ".join(f"{on[k]:.2f}" for k in sus) or "-",
                                 f"{sum(found)}/10" if decoy else "-", f"{coverage:.2f}" if decoy else "-", len(false),
                                 f"{100 * float(arrays['acc_decoy_test']):.1f} %", f"{100 * float(arrays['acc_val']):.1f} %",
                                 f"{cost:.1f}", f"{float(arrays['t_train']):.0f} s"])
                    print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True)
    body = _common.table(["data", "variant", "seed", "suspects", "on-swatch share", "classes found", "swatch coverage",
                          "false flags", "decoy-test acc", "val acc", "reliance cost (probe passes)", "train time"], rows)
    if rrr_rows:
        body += "\n\nRRR oracle (true swatch masks), Decoy MNIST:\n\n" + _common.table(
            ["seed", "plain decoy-test acc", "RRR decoy-test acc", "lambda", "fine-tune time"], rrr_rows)
    ratios = {f"discovery_{n.replace('-', '_')}": float(np.mean(v)) for n, v in disc.items()}
    ratios["false_flags_clean"] = float(sum(r[7] for r in rows if r[1] == "clean"))
    _common.report("Shortcut-suspect rule: calibration on Decoy MNIST / Fashion-MNIST", body, ratios, args.out, machine, args.quick)


if __name__ == "__main__":
    main()
