"""Finding and fixing a planted shortcut without human masks: a family of data x architecture x shortcut cells.

    python benchmarks/shortcut.py [--variant DATA:ARCH:SHORTCUT ...] [--seeds 3] [--train-size 6000]
        [--epochs 2] [--finetune-epochs 1] [--probe-size 500] [--test-size 2000] [--data-dir DIR] [--quick] [--out FILE]

``--variant`` (repeatable; ``*`` for every value of a part): DATA in {mnist, fmnist, cifar10 (the
subset)}, ARCH in {flatten, gap, maxpool, resnet18}, SHORTCUT in {swatch, tag, cast}
(``benchmarks/shortcut_family.py``); default ``mnist:flatten:swatch``. ``--dataset decoy-mnist`` /
``decoy-fmnist`` are the old names of ``mnist:flatten:swatch`` / ``fmnist:flatten:swatch``. The
calibration split is declared beforehand: MNIST x {flatten, GAP} x swatch; every other cell is
reported as held out.

Protocol, per cell and seed (a seeded split of the training split: --train-size training images, a
--probe-size probe, a 1000-image validation set with the training rule and a 1000-image *attacked*
validation set with the test rule, all held apart): the model trained --epochs with Adam (lr 1e-3,
batch 64) as a user would, ``I2XCallback`` attached (32 prototypes, 4 records an epoch) with
``measures=[RelianceMeasure()]``; the probe is held-out training-distribution images. Then, each
from a copy of the shortcut-trained model and for --finetune-epochs epochs (same optimiser, batch and data):

- full -> full: plain training, the same budget (what any gain must beat);
- I2X automatic, ``prototypes="suspects"`` (``I2XRun.suspects``: no ground truth): mask/blur,
  mask/random, penalise (RRR's input-gradient term on the flagged regions) and latent (RR-ClArC:
  the suspects' centred subspace at the target layer, the layers after it fine-tuned);
- **I2X auto, chosen on validation**: of those four, the mode with the best *attacked-validation*
  accuracy (never the test set); the headline row;
- P-ClArC: the suspects' subspace projected out at the target layer at inference (no training);
- RRR oracle: the input-gradient penalty on the TRUE artifact masks (*uses ground truth*);
- MaskTune: pixels whose GradCAM (true class, target layer, bilinear to pixels) exceeds the image's
  mean + 2 sd set to 0, one epoch on the masked images (no ground truth, no suspects);
- control: the chosen mode applied by the automatic rule to the clean-trained model.

Columns: accuracy on --test-size test-split images with the attacked shortcut (a shortcut-taker
fails there) and on the same images clean; the true class's GradCAM mass on the artifact.
Per cell: discovery (some suspect has > 50 % of its probe locations on artifact cells), suspect
precision (share of suspects that do: discovery alone ignores false positives), IoU of the
suspects' probe locations with the artifact cells, share of the gap closed = (repaired - plain) /
(ceiling - plain) on the attacked test, clipped to [0, 1] (0 when the gap is under 1 point).

Refinement (``measures.refine_suspects_of_run``, not yet part of ``I2XRun.suspects``): suspects
grown from the most relied-on locations, for a shortcut k-means drowns, on the shortcut-trained and
the clean model; reported beside the rule (discovery and precision of the rule's and the refined
suspects together, and the share of clean models that get a refined suspect); never used for repair.

Ratios (last line; means over the held-out cells when there are any, else over the calibration
cells): ``discovery_rate``, ``suspect_precision``, ``suspect_iou``, ``repair_gap`` (ceiling minus
the chosen repair, points), ``rrr_gap``, ``control_drop`` (clean-test accuracy of the clean model
minus after the rule, points), ``share_closed`` (chosen), ``share_closed_rrr``,
``share_closed_masktune``, ``share_closed_pclarc``, ``discovery_rate_with_refinement``,
``suspect_precision_with_refinement``, ``clean_refined_alarm_rate``.
"""

from __future__ import annotations

import copy
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from shortcut_family import ARCHS, CALIBRATION, DATASETS, SHORTCUTS, add_shortcut, expand, load, make_model
from torch.utils.data import DataLoader, TensorDataset

from lightning_i2x import FinetuneOptions, I2XCallback, PerturbationFinetuner, PrototypeOptions
from lightning_i2x.finetune import balance_weight, input_gradient_penalty, project_out
from lightning_i2x.measures import RelianceMeasure, refine_suspects_of_run
from lightning_i2x.saliency import probe_batches

import _common  # puts the repository and examples/ on sys.path

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")
warnings.filterwarnings("ignore", ".*val_check_interval.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")
warnings.filterwarnings("ignore", ".*nothing was fine-tuned.*")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

K = 32
MODES = {"I2X auto: mask, blur": dict(mode="mask", mask_fill="blur", mask_region="all"),
         "I2X auto: mask, random": dict(mode="mask", mask_fill="random", mask_region="all"),
         "I2X auto: penalise (input gradient)": dict(mode="penalise", mask_region="all"),
         "I2X auto: latent (RR-ClArC)": dict(mode="latent")}
CHOSEN = "I2X auto, chosen on attacked validation"
OLD_NAMES = {"decoy-mnist": "mnist:flatten:swatch", "decoy-fmnist": "fmnist:flatten:swatch"}


def split(seed: int, train_size: int, probe_size: int, n: int, val_size: int = 1000):
    perm = np.random.default_rng([seed, 7]).permutation(n)
    a, b, c = train_size, train_size + probe_size, train_size + probe_size + val_size
    return perm[:a], perm[a:b], perm[b:c], perm[c : c + val_size]


def cell_data(cell, seed: int, args) -> SimpleNamespace:
    """One cell's images for a seed: the training, probe and validation splits with the shortcut
    (``x``, true ``masks``) and without (``clean``), their labels ``y``, an attacked validation split
    (``xav``, ``yav``) and the attacked and clean test images (``tx``, ``cx``, ``ty``, ``test_masks``).
    Every split's shortcut is drawn from its own seed, so a script that uses fewer splits sees the same ones."""
    data, _, kind = cell
    base_train, base_test = load(data, True, args.data_dir), load(data, False, args.data_dir)
    bx, by = base_train.tensors
    tr, pr, va, av = split(seed, args.train_size, args.probe_size, len(bx))
    clean = [bx[torch.as_tensor(i)] for i in (tr, pr, va, av)]
    y = [by[torch.as_tensor(i)] for i in (tr, pr, va, av)]
    made = [add_shortcut(kind, clean[j], y[j], attacked=False, seed=seed + 1000 * j) for j in range(3)]
    xav, _ = add_shortcut(kind, clean[3], y[3], attacked=True, seed=seed + 4000)
    test_idx = torch.as_tensor(np.random.default_rng([seed, 9]).permutation(len(base_test))[: args.test_size])
    cx, ty = base_test.tensors[0][test_idx], base_test.tensors[1][test_idx]
    tx, test_masks = add_shortcut(kind, cx, ty, attacked=True, seed=seed + 3000)
    return SimpleNamespace(shape=(bx.shape[1], bx.shape[-1]), x=[m[0] for m in made], masks=[m[1] for m in made],
                           clean=clean[:3], y=y[:3], xav=xav, yav=y[3], tx=tx, cx=cx, ty=ty, test_masks=test_masks)


def artifact_cells(masks: np.ndarray, hw) -> np.ndarray:
    """(N, h, w): the map cells the artifact touches at all."""
    t = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
    return (F.adaptive_avg_pool2d(t, hw)[:, 0] > 0).numpy()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    """Eval mode for the measurement, the model's mode put back (Lightning keeps a module's mode when fit starts)."""
    was = model.training
    model.eval()
    pred = torch.cat([model(x[s : s + 500]).argmax(1) for s in range(0, len(x), 500)])
    model.train(was)
    return float((pred == y).float().mean())


def cams_of(model, layer, x, y, normalise=False) -> torch.Tensor:
    return torch.cat([pb.cams.cpu() for pb in probe_batches(model, layer, x, y, batch_size=250, normalise=normalise)])


def artifact_mass(model, layer, x, y, cells) -> float:
    """Share of the true class's raw GradCAM mass at the target layer on the artifact cells."""
    cams = cams_of(model, layer, x, y).clamp(min=0).double().numpy()
    return float((cams * cells).sum() / max(cams.sum(), 1e-12))


def train(data, seed, args, run_dir: Path, arch: str, shape):
    train_ds, probe_ds, val_ds = data
    pl.seed_everything(seed, workers=True, verbose=False)
    model = make_model(arch, shape[0], shape[1])
    cb = I2XCallback(probe_ds.tensors, target_layer=model.target_layer, num_prototypes=K, run_dir=run_dir, views=False,
                     prototypes=PrototypeOptions(seed=seed), measures=[RelianceMeasure(seed=seed)])
    steps = -(-len(train_ds) // 64)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                         val_check_interval=max(1, steps // 4), num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(train_ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)),
                DataLoader(val_ds, batch_size=500))
    return model, cb.run


def rrr(model, train_ds, masks, epochs, seed):
    """The oracle: input-gradient penalty on the true artifact masks, Adam 1e-3, batch 64."""
    m = copy.deepcopy(model)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x, y = train_ds.tensors
    mk = torch.from_numpy(masks).float()
    g = torch.Generator().manual_seed(seed)
    lam = None
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 64):
            i = perm[s : s + 64]
            pen, logits = input_gradient_penalty(m, x[i], y[i], mk[i], return_logits=True)
            ce = F.cross_entropy(logits, y[i])
            if lam is None and float(pen.detach()) > 0:
                lam = balance_weight(ce, pen)
            opt.zero_grad()
            (ce + (lam or 0.0) * pen).backward()
            opt.step()
    return m


def masktune(model, train_ds, seed):
    """MaskTune (Asgari et al. 2022): pixels whose GradCAM exceeds the image's mean + 2 sd set to 0;
    one epoch on the masked images, Adam 1e-3, batch 64."""
    m = copy.deepcopy(model)
    layer = m.get_submodule(m.target_layer)
    x, y = train_ds.tensors
    cams = cams_of(m, layer, x, y).clamp(min=0).unsqueeze(1)
    up = F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = up.flatten(1)
    thr = (flat.mean(1) + 2 * flat.std(1)).view(-1, 1, 1)
    xm = torch.where((up > thr).unsqueeze(1), torch.zeros_like(x), x)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    for s in range(0, len(x), 64):
        i = perm[s : s + 64]
        opt.zero_grad()
        F.cross_entropy(m(xm[i]), y[i]).backward()
        opt.step()
    return m


def on_artifact(run, cells, protos) -> dict[int, float]:
    a = run.assignment()
    return {int(k): float(((a == k) & cells).sum() / max(1, (a == k).sum())) for k in protos}


def iou(run, cells, protos) -> float:
    a = run.assignment()
    s = np.isin(a, list(protos)) if protos else np.zeros(a.shape, bool)
    union = (s | cells).sum()
    return float((s & cells).sum() / union) if union else 0.0


def refined(run, model, cells, seed: int) -> dict:
    """``measures.refine_suspects_of_run`` (suspects grown from the most relied-on locations, for
    a shortcut k-means drowns): its suspects, each one's on-artifact share, and the seconds it took."""
    t0 = time.perf_counter()
    ref = refine_suspects_of_run(run, model, seed=seed)
    on = {int(s): float((ref.locations(s) & cells).sum() / max(1, ref.locations(s).sum())) for s in ref.suspects}
    return dict(suspects=list(ref.suspects), on=on, seconds=time.perf_counter() - t0)


def share_closed(repaired: float, plain: float, ceiling: float) -> float:
    gap = ceiling - plain
    if gap < 0.01:
        return 0.0
    return float(np.clip((repaired - plain) / gap, 0.0, 1.0))


def one_seed(cell, seed: int, args, tmp: Path, gallery_out: Path | None):
    data, arch, kind = cell
    d = cell_data(cell, seed, args)
    shape, (train_masks, probe_masks, _) = d.shape, d.masks
    shortcut = [TensorDataset(x, y) for x, y in zip(d.x, d.y)]
    clean = [TensorDataset(x, y) for x, y in zip(d.clean, d.y)]
    xav, yav, tx, cx, ty, test_masks = d.xav, d.yav, d.tx, d.cx, d.ty, d.test_masks

    t0 = time.perf_counter()
    clean_model, clean_run = train(clean, seed, args, tmp / f"{data}-{arch}-{kind}-clean-{seed}", arch, shape)
    plain, run = train(shortcut, seed, args, tmp / f"{data}-{arch}-{kind}-decoy-{seed}", arch, shape)
    t_train = time.perf_counter() - t0
    hw = tuple(run.feature_shape)
    test_cells, probe_cells = artifact_cells(test_masks, hw), artifact_cells(probe_masks, hw)

    def measure(model, projection=None):
        layer = model.get_submodule(model.target_layer)
        if projection is not None:
            with project_out(model, layer, projection):
                return (accuracy(model, tx, ty), accuracy(model, cx, ty), artifact_mass(model, layer, tx, ty, test_cells))
        return (accuracy(model, tx, ty), accuracy(model, cx, ty), artifact_mass(model, layer, tx, ty, test_cells))

    rows = {"clean-trained (ceiling)": measure(clean_model), "plain model on shortcut data": measure(plain)}
    suspects = run.suspects()
    sus_on = on_artifact(run, probe_cells, suspects)
    drew_gallery = gallery_out is not None and bool(suspects)
    if drew_gallery:
        fig = run.plot_gallery(sorted(suspects[:6]), n=8)
        gallery_out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(gallery_out)
    fe = args.finetune_epochs
    val_loader = DataLoader(shortcut[2], batch_size=500)
    notes, timings = {}, {}

    def finetune(run_, model, train_ds, **kw):
        m = copy.deepcopy(model)
        ft = PerturbationFinetuner(run_, FinetuneOptions(schedule=("curated",) * fe, seed=seed, out_dir=tmp / "ft", **kw), progress=False)
        res = ft.fit(m, DataLoader(train_ds, batch_size=64, shuffle=True), val_loader)
        return m, res, ft

    attacked_val = {}
    for label, kw in MODES.items():
        t0 = time.perf_counter()
        if suspects:
            m, res, ft = finetune(run, plain, shortcut[0], prototypes=suspects, control=label == "I2X auto: mask, blur", **kw)
            rows[label] = measure(m)
            attacked_val[label] = accuracy(m, xav, yav)
            notes[label] = res.skipped_reason or (f"rank {res.latent_rank}" if res.latent_rank else f"{res.flagged} flagged")
            if ft.control_model is not None:
                rows["full -> full, same budget"] = measure(ft.control_model)
        else:
            rows[label] = rows["plain model on shortcut data"]
            attacked_val[label] = accuracy(plain, xav, yav)
            notes[label] = "no suspect: unchanged"
        timings[label] = time.perf_counter() - t0
    if "full -> full, same budget" not in rows:
        ctrl = copy.deepcopy(plain)
        ft = PerturbationFinetuner(run, FinetuneOptions(prototypes=[0], schedule=("full",) * fe, seed=seed, out_dir=tmp / "ft"),
                                   progress=False)
        ft.fit(ctrl, DataLoader(shortcut[0], batch_size=64, shuffle=True), val_loader)
        rows["full -> full, same budget"] = measure(ctrl)
    chosen = max(MODES, key=lambda lab: attacked_val[lab])  # on the attacked VALIDATION split, never the test set
    rows[CHOSEN] = rows[chosen]
    notes[CHOSEN] = chosen.removeprefix("I2X auto: ")
    if suspects:
        basis = PerturbationFinetuner(run, FinetuneOptions(prototypes=suspects, seed=seed), progress=False).latent_basis(
            plain, DataLoader(shortcut[0], batch_size=64))
        rows["P-ClArC: suspects' subspace projected out (no training)"] = measure(plain, basis if basis.rank else None)
        notes["P-ClArC: suspects' subspace projected out (no training)"] = f"rank {basis.rank}"
    else:
        rows["P-ClArC: suspects' subspace projected out (no training)"] = rows["plain model on shortcut data"]
    rows["RRR oracle (true artifact masks, uses ground truth)"] = measure(rrr(plain, shortcut[0], train_masks, fe, seed))
    rows["MaskTune (GradCAM > mean + 2 sd masked, one epoch)"] = measure(masktune(plain, shortcut[0], seed))
    clean_sus = clean_run.suspects()
    label = "control: automatic rule on the clean model"
    if clean_sus:
        m, res, _ = finetune(clean_run, clean_model, clean[0], prototypes=clean_sus, **MODES[chosen])
        rows[label] = measure(m)
    else:
        rows[label] = rows["clean-trained (ceiling)"]
    notes[label] = f"suspects {clean_sus}" if clean_sus else "no suspect: unchanged"
    ceiling, p0 = rows["clean-trained (ceiling)"][0], rows["plain model on shortcut data"][0]
    shares = {k: share_closed(rows[r][0], p0, ceiling) for k, r in (
        ("chosen", CHOSEN), ("rrr", "RRR oracle (true artifact masks, uses ground truth)"),
        ("masktune", "MaskTune (GradCAM > mean + 2 sd masked, one epoch)"),
        ("pclarc", "P-ClArC: suspects' subspace projected out (no training)"), ("control", "full -> full, same budget"))}
    hits = [k for k, v in sus_on.items() if v > 0.5]
    ref, ref_clean = refined(run, plain, probe_cells, seed), refined(clean_run, clean_model, probe_cells, seed)
    ref_hits = [k for k, v in ref["on"].items() if v > 0.5]
    n_with = len(suspects) + len(ref["suspects"])
    info = dict(suspects=suspects, sus_on=sus_on, clean_suspects=clean_sus, t_train=t_train, notes=notes, chosen=chosen,
                discovered=float(bool(hits)), precision=float(len(hits) / len(suspects)) if suspects else 0.0,
                iou=iou(run, probe_cells, suspects), shares=shares, refined=ref, refined_clean=ref_clean["suspects"],
                discovered_with=float(bool(hits or ref_hits)),
                precision_with=float((len(hits) + len(ref_hits)) / n_with) if n_with else 0.0, attacked_val=attacked_val, timings=timings, drew_gallery=drew_gallery)
    print(f"[{data}:{arch}:{kind} seed {seed}] suspects {suspects} on-artifact {sus_on} chosen {chosen} "
          f"clean suspects {clean_sus}; refined {ref['suspects']} on-artifact {ref['on']} ({ref['seconds']:.0f} s), "
          f"clean model refined {ref_clean['suspects']}", file=sys.stderr)
    for k, v in rows.items():
        print(f"  {k}: attacked-test {100 * v[0]:.1f} clean-test {100 * v[1]:.1f} artifact-mass {v[2]:.3f}", file=sys.stderr, flush=True)
    return rows, info


def ms(vals, scale=100.0, digits=1):
    v = scale * np.asarray(vals, float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.{digits}f}"


def cell_report(cell, all_rows, infos, args) -> tuple[str, dict[str, float]]:
    labels = list(all_rows[0])
    body_rows = []
    for lab in labels:
        note = "; ".join(f"s{s}: {i['notes'][lab]}" for s, i in enumerate(infos) if lab in i["notes"]) or ""
        body_rows.append([lab, ms([r[lab][0] for r in all_rows]), ms([r[lab][1] for r in all_rows]),
                          ms([r[lab][2] for r in all_rows], 1.0, 3), note])
    body = _common.table(["model", "attacked-test acc (%)", "clean-test acc (%)", "GradCAM mass on artifact", "notes"], body_rows)
    sus_rows = [[s, i["suspects"], ", ".join(f"P-{k}: {v:.2f}" for k, v in i["sus_on"].items()) or "-",
                 "yes" if i["discovered"] else "no", f"{i['precision']:.2f}", f"{i['iou']:.2f}", i["chosen"].removeprefix("I2X auto: "),
                 i["clean_suspects"], f"{i['t_train']:.0f} s", i["refined"]["suspects"],
                 ", ".join(f"R-{k}: {v:.2f}" for k, v in i["refined"]["on"].items()) or "-", "yes" if i["discovered_with"] else "no",
                 i["refined_clean"], f"{i['refined']['seconds']:.0f} s"] for s, i in enumerate(infos)]
    body += "\n\nSuspects per seed (on-artifact share of each suspect's probe locations: evaluation only):\n\n"
    body += _common.table(["seed", "suspects", "on-artifact share", "discovered?", "suspect precision", "IoU with artifact",
                           "mode chosen on attacked validation", "suspects (clean model)", "training time (2 models)",
                           "refined suspects", "refined on-artifact share", "discovered with refinement?",
                           "refined suspects (clean model)", "refining time"], sus_rows)
    ceiling = np.array([r["clean-trained (ceiling)"][0] for r in all_rows])
    gap = lambda lab: float(100 * np.mean(ceiling - np.array([r[lab][0] for r in all_rows])))
    ratios = {
        "discovery_rate": float(np.mean([i["discovered"] for i in infos])),
        "suspect_precision": float(np.mean([i["precision"] for i in infos])),
        "suspect_iou": float(np.mean([i["iou"] for i in infos])),
        "repair_gap": gap(CHOSEN), "rrr_gap": gap("RRR oracle (true artifact masks, uses ground truth)"),
        "control_drop": float(100 * np.mean([r["clean-trained (ceiling)"][1] - r["control: automatic rule on the clean model"][1]
                                             for r in all_rows])),
        "share_closed": float(np.mean([i["shares"]["chosen"] for i in infos])),
        "share_closed_rrr": float(np.mean([i["shares"]["rrr"] for i in infos])),
        "share_closed_masktune": float(np.mean([i["shares"]["masktune"] for i in infos])),
        "share_closed_pclarc": float(np.mean([i["shares"]["pclarc"] for i in infos])),
        "discovery_rate_with_refinement": float(np.mean([i["discovered_with"] for i in infos])),
        "suspect_precision_with_refinement": float(np.mean([i["precision_with"] for i in infos])),
        "clean_refined_alarm_rate": float(np.mean([bool(i["refined_clean"]) for i in infos])),
    }
    return body, ratios


def main() -> None:
    machine = _common.machine()  # at the start: it records the load average the run began under
    ap = _common.parser(__doc__)
    ap.add_argument("--variant", action="append", default=None,
                    help=f"DATA:ARCH:SHORTCUT, repeatable, '*' for all: DATA {DATASETS}, ARCH {ARCHS}, SHORTCUT {SHORTCUTS}")
    ap.add_argument("--dataset", choices=sorted(OLD_NAMES), default=None, help="old spelling of --variant DATA:flatten:swatch")
    ap.add_argument("--data-dir", default=None, help="the folder holding mnist/, fashion-mnist/, cifar10/ (default: $I2X_DATA_DIR or shared/data)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=6000)
    ap.add_argument("--probe-size", type=int, default=500)
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--gallery", default=None, help="save the suspects' gallery of the first cell's first seed that names any to this PNG (the table says which)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.train_size, args.probe_size, args.test_size, args.epochs = 1, 1000, 100, 200, 2
    if args.finetune_epochs > 2:
        ap.error("--finetune-epochs is at most 2 (the protocol's budget)")
    specs = (args.variant or []) + ([OLD_NAMES[args.dataset]] if args.dataset else [])
    try:
        cells = expand(specs or ["mnist:flatten:swatch"])
    except ValueError as e:
        ap.error(str(e))
    _common.set_threads(args.threads)
    body, per_cell, summary = "", {}, []
    gallery_seed = None  # the gallery is the first cell's first seed that names a suspect
    with tempfile.TemporaryDirectory() as tmp:
        for ci, cell in enumerate(cells):
            all_rows, infos = [], []
            for seed in range(args.seeds):
                wanted = args.gallery and ci == 0 and gallery_seed is None
                rows, info = one_seed(cell, seed, args, Path(tmp), Path(args.gallery) if wanted else None)
                if wanted and info["drew_gallery"]:
                    gallery_seed = seed
                all_rows.append(rows)
                infos.append(info)
            text, ratios = cell_report(cell, all_rows, infos, args)
            split_name = "calibration" if cell in CALIBRATION else "held-out"
            per_cell[cell] = (ratios, split_name)
            body += f"\n\n### {':'.join(cell)} ({split_name})\n\n{text}\n"
            summary.append([":".join(cell), split_name, f"{ratios['discovery_rate']:.2f}", f"{ratios['suspect_precision']:.2f}",
                            f"{ratios['suspect_iou']:.2f}", ms([r["plain model on shortcut data"][0] for r in all_rows]),
                            ms([r[CHOSEN][0] for r in all_rows]), ms([r["clean-trained (ceiling)"][0] for r in all_rows]),
                            ms([r[CHOSEN][1] for r in all_rows]), f"{ratios['share_closed']:.2f}",
                            f"{np.mean([i['shares']['control'] for i in infos]):.2f}", f"{ratios['share_closed_rrr']:.2f}",
                            f"{ratios['share_closed_masktune']:.2f}", f"{ratios['share_closed_pclarc']:.2f}", f"{ratios['control_drop']:+.1f}",
                            f"{ratios['discovery_rate_with_refinement']:.2f}", f"{ratios['suspect_precision_with_refinement']:.2f}",
                            f"{ratios['clean_refined_alarm_rate']:.2f}"])
    head = _common.table(["cell", "split", "discovery", "suspect precision", "IoU", "plain attacked-test (%)",
                          "repaired (chosen on val) attacked-test (%)", "ceiling attacked-test (%)", "repaired clean-test (%)",
                          "share closed", "share closed, same-budget control", "share closed, RRR oracle", "share closed, MaskTune",
                          "share closed, P-ClArC", "control drop (clean model, points)", "discovery with refinement",
                          "suspect precision with refinement", "clean models with a refined suspect"], summary)
    body = head + body
    body += (f"\n\nSizes: {args.train_size} training images, {args.probe_size} probe, 1000 validation, 1000 attacked validation, "
             f"{args.test_size} test; {args.epochs} training epochs, {args.finetune_epochs} fine-tuning epoch(s); seeds 0..{args.seeds - 1}. "
             "Calibration cells: " + ", ".join(":".join(c) for c in sorted(CALIBRATION)) + "; every other cell is held out.")
    if args.gallery:
        note = (f"the suspects' gallery ({args.gallery}) is seed {gallery_seed}'s of {':'.join(cells[0])}, the first seed naming a suspect"
                if gallery_seed is not None else f"no gallery written to {args.gallery}: no seed of {':'.join(cells[0])} named a suspect")
        print(note, file=sys.stderr, flush=True)
        body += f"\n\nGallery: {note}."
    held = [r for r, s in per_cell.values() if s == "held-out"] or [r for r, _ in per_cell.values()]
    ratios = {k: float(np.mean([r[k] for r in held])) for k in held[0]}
    _common.report("Finding and fixing a shortcut: " + ", ".join(":".join(c) for c in cells), body, ratios, args.out,
                   machine, args.quick)


if __name__ == "__main__":
    main()
