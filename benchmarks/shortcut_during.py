"""Repairing a shortcut during training against after it, at an equal total number of epochs.

    python benchmarks/shortcut_during.py [--variant DATA:ARCH:SHORTCUT ...] [--seeds 3] [--train-size 6000]
        [--epochs 2] [--probe-size 500] [--test-size 2000] [--penalty-ratio 1] [--layers after|all]
        [--data-dir DIR] [--quick] [--out FILE]

Cells as ``benchmarks/shortcut.py`` (``shortcut_family.py``; default the issue's case
``mnist:maxpool:swatch`` and ``fmnist:maxpool:swatch``). Per cell and seed, the same seeded split and
shortcut as ``shortcut.py``; every model Adam 1e-3, batch 64, ``I2XCallback`` attached (32
prototypes, 4 records an epoch, ``RelianceMeasure(when="record")``: the suspects at every record)
and, in total, --epochs + 1 epochs of training:

- plain, more: --epochs epochs on the shortcut data, then one more plain epoch (a fresh optimiser,
  as ``shortcut.py``'s same-budget control);
- after: --epochs epochs, then one epoch of ``PerturbationFinetuner(prototypes="suspects",
  mode="latent")`` (RR-ClArC on the suspects of the last record; unchanged when there are none);
- during: one fit of --epochs + 1 epochs with ``RepairDuringTraining`` (the same latent penalty,
  switched on from the record at which the rule first names a suspect; never on when it names none);
  both repairs with --penalty-ratio (the penalty's weight against the cross-entropy at its start) and
  --layers (the parameters the penalty trains: after the target layer, or all);
- the ceiling: --epochs + 1 epochs on the clean data.

Columns: accuracy on --test-size test-split images with the attacked shortcut and on the same
images clean; share of the gap closed = (repaired - plain) / (ceiling - plain) on the attacked test
(clipped to [0, 1], 0 under a 1-point gap; "plain" is the first row's model after --epochs). Ratios
(last line, means over the cells): ``share_closed_during``, ``share_closed_after``,
``share_closed_plain_more``, ``during_minus_after`` (attacked-test points), ``switched_on_rate``
(seeds whose during-run switched on) and ``first_record_fraction`` (the record it switched on at,
as a fraction of the run's records, over the seeds that switched on; ``n/a`` when none did).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from shortcut import K, accuracy, share_closed, split
from shortcut_family import CALIBRATION, add_shortcut, expand, load, make_model
from torch.utils.data import DataLoader, TensorDataset

from lightning_i2x import FinetuneOptions, I2XCallback, PerturbationFinetuner, PrototypeOptions, RepairDuringTraining
from lightning_i2x.measures import RelianceMeasure

import _common  # puts the repository and examples/ on sys.path

warnings.filterwarnings("ignore", ".*does not have many workers.*|.*GPU available but not used.*|.*val_check_interval.*|.*LeafSpec.*")
warnings.filterwarnings("ignore", ".*RepairDuringTraining did nothing.*")  # the table says so, per seed
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

ROWS = ("plain (--epochs)", "plain, one more epoch", "after: one latent epoch on the suspects", "during: RepairDuringTraining",
        "clean-trained (ceiling)")


def fit(data, seed: int, epochs: int, run_dir: Path, arch: str, shape, repair: dict | None):
    train_ds, probe_ds, val_ds = data
    pl.seed_everything(seed, workers=True, verbose=False)
    model = make_model(arch, shape[0], shape[1])
    i2x = I2XCallback(probe_ds.tensors, target_layer=model.target_layer, num_prototypes=K, run_dir=run_dir, views=False,
                      prototypes=PrototypeOptions(seed=seed), measures=[RelianceMeasure(seed=seed, when="record")])
    fixer = RepairDuringTraining(i2x, seed=seed, **repair) if repair is not None else None
    steps = -(-len(train_ds) // 64)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[i2x] + ([fixer] if fixer else []),
                         val_check_interval=max(1, steps // 4), num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(train_ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)),
                DataLoader(val_ds, batch_size=500))
    return model, i2x.run, fixer


def one_seed(cell, seed: int, args, tmp: Path) -> tuple[dict, dict]:
    data, arch, kind = cell
    base_train, base_test = load(data, True, args.data_dir), load(data, False, args.data_dir)
    bx, by = base_train.tensors
    tr, pr, va, _ = split(seed, args.train_size, args.probe_size, len(bx))
    shape = (bx.shape[1], bx.shape[-1])
    sub = lambda idx: (bx[torch.as_tensor(idx)], by[torch.as_tensor(idx)])  # noqa: E731
    shortcut = [TensorDataset(add_shortcut(kind, *sub(i), attacked=False, seed=seed + 1000 * j)[0], sub(i)[1])
                for j, i in enumerate((tr, pr, va))]
    clean = [TensorDataset(*sub(i)) for i in (tr, pr, va)]
    test_idx = torch.as_tensor(np.random.default_rng([seed, 9]).permutation(len(base_test))[: args.test_size])
    cx, ty = base_test.tensors[0][test_idx], base_test.tensors[1][test_idx]
    tx, _ = add_shortcut(kind, cx, ty, attacked=True, seed=seed + 3000)
    measure = lambda m: (accuracy(m, tx, ty), accuracy(m, cx, ty))  # noqa: E731
    name = "-".join(cell)
    total = args.epochs + 1

    setting = dict(penalty_ratio=args.penalty_ratio, layers=args.layers)
    plain, run, _ = fit(shortcut, seed, args.epochs, tmp / f"{name}-plain-{seed}", arch, shape, repair=None)
    rows = {ROWS[0]: measure(plain)}
    loader = DataLoader(shortcut[0], batch_size=64, shuffle=True)
    val = DataLoader(shortcut[2], batch_size=500)
    more = copy.deepcopy(plain)
    PerturbationFinetuner(run, FinetuneOptions(prototypes=[0], schedule=("full",), seed=seed, out_dir=tmp / "ft"),
                          progress=False).fit(more, loader, val)
    rows[ROWS[1]] = measure(more)
    suspects = run.suspects()
    after = copy.deepcopy(plain)
    if suspects:
        PerturbationFinetuner(run, FinetuneOptions(prototypes=suspects, mode="latent", schedule=("curated",), seed=seed,
                                                   penalty_ratio=args.penalty_ratio, latent_layers=args.layers, out_dir=tmp / "ft"),
                              progress=False).fit(after, loader, val)
    rows[ROWS[2]] = measure(after)
    during, during_run, fixer = fit(shortcut, seed, total, tmp / f"{name}-during-{seed}", arch, shape, repair=setting)
    rows[ROWS[3]] = measure(during)
    ceiling, _, _ = fit(clean, seed, total, tmp / f"{name}-clean-{seed}", arch, shape, repair=None)
    rows[ROWS[4]] = measure(ceiling)
    start = fixer.started
    info = dict(after_suspects=len(suspects), started=start, records=during_run.num_checkpoints,
                note=start.describe() if start else f"never on: {fixer.last_report.summary() if fixer.last_report else 'no record read'}")
    return rows, info


def cell_report(cell, all_rows: list[dict], infos: list[dict]) -> tuple[str, dict[str, float]]:
    ceil = [r[ROWS[4]][0] for r in all_rows]
    base = [r[ROWS[0]][0] for r in all_rows]
    closed = {row: [share_closed(r[row][0], b, c) for r, b, c in zip(all_rows, base, ceil)] for row in ROWS[1:4]}
    lines = [[row, *(f"{100 * r[row][0]:.1f} / {100 * r[row][1]:.1f}" for r in all_rows),
              f"{np.mean(closed[row]):.2f}" if row in closed else ""] for row in ROWS]
    text = _common.table(["model", *(f"seed {i}: attacked / clean test (%)" for i in range(len(all_rows))), "share closed (mean)"], lines)
    text += "\n\n" + "\n".join(f"- seed {i}: the post-hoc repair had {info['after_suspects']} suspect(s); during: {info['note']} "
                                f"(of {info['records']} records)" for i, info in enumerate(infos))
    on = [i for i in infos if i["started"] is not None]
    ratios = {"share_closed_during": float(np.mean(closed[ROWS[3]])), "share_closed_after": float(np.mean(closed[ROWS[2]])),
              "share_closed_plain_more": float(np.mean(closed[ROWS[1]])),
              "during_minus_after": float(100 * np.mean([r[ROWS[3]][0] - r[ROWS[2]][0] for r in all_rows])),
              "switched_on_rate": len(on) / len(infos),
              "first_record_fraction": float(np.mean([(i["started"].record + 1) / i["records"] for i in on])) if on else None}
    return text, ratios


def main() -> None:
    machine = _common.machine()
    ap = _common.parser(__doc__)
    ap.add_argument("--variant", action="append", default=None, help="DATA:ARCH:SHORTCUT, repeatable, as benchmarks/shortcut.py")
    ap.add_argument("--data-dir", default=None, help="the folder holding mnist/, fashion-mnist/, cifar10/")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=6000)
    ap.add_argument("--probe-size", type=int, default=500)
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--penalty-ratio", type=float, default=1.0, help="both repairs' penalty weight against the cross-entropy")
    ap.add_argument("--layers", choices=("after", "all"), default="after", help="the parameters both repairs' penalty trains")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.train_size, args.probe_size, args.test_size, args.epochs = 1, 640, 100, 200, 1
    try:
        cells = expand(args.variant or ["mnist:maxpool:swatch", "fmnist:maxpool:swatch"])
    except ValueError as e:
        ap.error(str(e))
    _common.set_threads(args.threads)
    body, summary, per_cell = "", [], []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in cells:
            results = [one_seed(cell, seed, args, Path(tmp)) for seed in range(args.seeds)]
            text, ratios = cell_report(cell, [r for r, _ in results], [i for _, i in results])
            split_name = "calibration" if cell in CALIBRATION else "held-out"
            body += f"\n\n### {':'.join(cell)} ({split_name})\n\n{text}\n"
            summary.append([":".join(cell), split_name, *("none switched on" if v is None else f"{v:.2f}" for v in ratios.values())])
            per_cell.append(ratios)
    head = _common.table(["cell", "split", "share closed, during", "share closed, after", "share closed, plain one more epoch",
                          "during minus after (attacked-test points)", "seeds switched on", "first record (fraction of the run)"],
                         summary)
    body = head + body + (f"\n\nSizes: {args.train_size} training images, {args.probe_size} probe, 1000 validation, "
                          f"{args.test_size} test; {args.epochs} + 1 epochs in total for every model; seeds 0..{args.seeds - 1}; "
                          f"both repairs: penalty ratio {args.penalty_ratio:g}, layers {args.layers}. Calibration cells: "
                          + ", ".join(":".join(c) for c in sorted(CALIBRATION)) + "; every other cell is held out.")
    known = {k: [r[k] for r in per_cell if r[k] is not None] for k in per_cell[0]}
    ratios = {k: float(np.mean(v)) if v else None for k, v in known.items()}  # None: no seed of any cell switched on
    _common.report("Repairing a shortcut during training against after it: " + ", ".join(":".join(c) for c in cells), body, ratios,
                   args.out, machine, args.quick)


if __name__ == "__main__":
    main()
