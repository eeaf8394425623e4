"""Calibrating the refined suspects on the declared calibration split, judged on held-out cells.

    python benchmarks/shortcut_refine.py [--variant DATA:ARCH:SHORTCUT ...] [--seeds 3] [--train-size 6000]
        [--epochs 2] [--probe-size 500] [--test-size 2000] [--data-dir DIR] [--quick] [--out FILE]

``measures.refine_suspects`` (suspects grown from the locations the model relies on, for an artifact
k-means drowns; docs/shortcut.md) first judged its refined prototypes with the suspect rule's own
thresholds, set on a planted unit case. In the benchmark family it found the swatch, but it also
named refined suspects on most clean models. Here its settings are chosen on the calibration cells, ``shortcut_family.CALIBRATION`` (MNIST x {flatten,
GAP} x swatch), and that choice is reported on the cells given by ``--variant`` that are not
calibration cells (the default list: every held-out cell of MNIST and Fashion-MNIST whose plain model
leans on its shortcut in the family tables, and two casts).

Protocol, per cell and seed: the seeded split and shortcut of ``shortcut.py``. Two models are trained
--epochs as there (Adam 1e-3, batch 64, the same seeding), one on the shortcut data and one on the
clean data (the ceiling), without the callback: refining needs only the model. Each is refined on a
probe of its own training distribution (the shortcut images for the first, the clean images for the
second), once for each pair of the grid's two grouping settings: ``min_reliance_per_location`` (the
drop a location or 2 x 2 block must cost to be relied on, and the rule's per-location criterion)
and ``scale`` (the grouping distance). The refined prototypes are then judged with each value of the
rule's ``min_images``, ``min_reliance`` and ``min_localisation`` (``analysis.suspect_report`` on
the refined reliance, which is what ``refine_suspects`` does with those thresholds).

Evaluation only (nothing the rule sees): a refined suspect is *on the artifact* when more than half of
its probe locations are artifact cells. Per model: *found* (the shortcut model has a suspect on the
artifact), *alarm* (the clean model has a refined suspect at all), *precision* (the shortcut models'
suspects on the artifact, as a share of all of them). On a cast cell (not localised: its mask is
the whole image) every suspect on the cast model is a false claim; found is not counted there.
"Leans" is the clean model's attacked-test accuracy minus the shortcut model's, in points: where it
is under 1, a model that ignores its shortcut has nothing to be found.

The choice, declared before any run: the grid setting with the highest found rate minus alarm rate
on the calibration cells; ties go to the higher precision, then to the earlier setting in the grid
(the first values of each list are the suspect rule's, ``analysis.SUSPECT_RULE_DEFAULTS``, and
``refine_suspects``' grouping defaults). The choice became ``measures.REFINED_RULE_DEFAULTS``; the
report says whether the two still agree.

Ratios (last line, over the held-out cells; found over the localised ones whose model leans):
``found_chosen``, ``alarm_chosen``, ``precision_chosen``, ``cast_claims_chosen``, and the same four
with the rule's thresholds (``*_rule``).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import sys
import time
import warnings

import lightning.pytorch as pl
import numpy as np
import torch
from shortcut import accuracy, artifact_cells, cell_data
from shortcut_family import CALIBRATION, expand, make_model
from torch.utils.data import DataLoader, TensorDataset

from lightning_i2x.analysis import SUSPECT_RULE_DEFAULTS, suspect_report
from lightning_i2x.measures import REFINED_RULE_DEFAULTS, refine_suspects

import _common  # puts the repository and examples/ on sys.path

warnings.filterwarnings("ignore", ".*does not have many workers.*|.*GPU available but not used.*|.*LeafSpec.*")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

RULE = SUSPECT_RULE_DEFAULTS
GROUPING = {"min_reliance_per_location": (RULE["min_reliance_per_location"], 0.2, 0.3, 0.5),
            "scale": (inspect.signature(refine_suspects).parameters["scale"].default, 0.75)}
"""The settings that change which locations are grouped (one ``refine_suspects`` call each pair); the rule's first."""
JUDGING = {"min_images": (RULE["min_images"], 10, 20), "min_reliance": (RULE["min_reliance"], 0.05),
           "min_localisation": (RULE["min_localisation"], 0.75, 0.9)}
"""The rule's thresholds re-applied to each call's refined reliance; the rule's own first."""
HELD_OUT = ["mnist:maxpool:swatch", "mnist:gap:tag", "fmnist:flatten:swatch", "fmnist:maxpool:swatch", "fmnist:maxpool:tag",
            "mnist:maxpool:cast", "fmnist:maxpool:cast"]
MIN_LEAN = 1.0  # points: under it the model ignores its shortcut (as the family's discovery count)


def settings() -> list[dict]:
    """Every grid setting, the rule's thresholds first."""
    grid = {**GROUPING, **JUDGING}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


RULES = tuple(settings()[0].values())


def fit_model(train_ds, seed: int, epochs: int, arch: str, shape):
    pl.seed_everything(seed, workers=True, verbose=False)
    model = make_model(arch, shape[0], shape[1])
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, DataLoader(train_ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def judged(model, probe: TensorDataset, masks: np.ndarray, seed: int, groupings: list[tuple]) -> dict[tuple, tuple[int, int]]:
    """For every grid setting with one of the ``groupings`` (values of ``GROUPING``): (refined
    suspects, of them on the artifact) of ``model`` on ``probe``, whose (N, H, W) artifact ``masks``
    are known."""
    x, y = probe.tensors
    layer = model.get_submodule(model.target_layer)
    out = {}
    for grouping in (dict(zip(GROUPING, v)) for v in groupings):
        ref = refine_suspects(model, layer, x, y, seed=seed, scale=grouping["scale"],
                              min_reliance_per_location=grouping["min_reliance_per_location"])
        cells = artifact_cells(masks, ref.drops.shape[1:])
        for judging in (dict(zip(JUDGING, v)) for v in itertools.product(*JUDGING.values())):
            setting = {**grouping, **judging}
            if ref.reliance is None:
                suspects = ()
            else:
                th = {**RULE, **setting}
                th.pop("scale")
                report = suspect_report(ref.reliance, ref.assignment, y.numpy(), **th)
                suspects = tuple(k - 1 for k in report.suspects if k >= 1)
            on = sum(float((ref.locations(s) & cells).sum()) > 0.5 * max(1, ref.locations(s).sum()) for s in suspects)
            out[tuple(setting.values())] = (len(suspects), int(on))
    return out


def one_seed(cell, seed: int, args, groupings: list[tuple]) -> dict:
    _, arch, _ = cell
    d = cell_data(cell, seed, args)
    (xt, xp, _), (yt, yp, _), (ct, cp, _) = d.x, d.y, d.clean
    t0 = time.perf_counter()
    plain = fit_model(TensorDataset(xt, yt), seed, args.epochs, arch, d.shape)
    clean = fit_model(TensorDataset(ct, yt), seed, args.epochs, arch, d.shape)
    t1 = time.perf_counter()
    info = dict(lean=100 * (accuracy(clean, d.tx, d.ty) - accuracy(plain, d.tx, d.ty)),
                shortcut=judged(plain, TensorDataset(xp, yp), d.masks[1], seed, groupings),
                clean=judged(clean, TensorDataset(cp, yp), d.masks[1], seed, groupings), t_train=t1 - t0,
                t_refine=(time.perf_counter() - t1) / 2)
    print(f"[{':'.join(cell)} seed {seed}] leans {info['lean']:+.1f} points; the rule's thresholds: shortcut model "
          f"{info['shortcut'][RULES]}, clean model {info['clean'][RULES]} (suspects, on artifact); "
          f"{info['t_refine']:.0f} s a model for {len(groupings)} refine_suspects call(s)", file=sys.stderr, flush=True)
    return info


def scores(cell, infos: list[dict], key: tuple) -> dict[str, float | None]:
    """One cell's figures for one setting: found (None on a cast or where no seed's model leans), alarm, precision, cast claims."""
    cast = cell[2] == "cast"
    leaning = [i for i in infos if i["lean"] >= MIN_LEAN]
    named = sum(i["shortcut"][key][0] for i in infos)
    return dict(found=None if cast or not leaning else float(np.mean([i["shortcut"][key][1] > 0 for i in leaning])),
                alarm=float(np.mean([i["clean"][key][0] > 0 for i in infos])),
                precision=None if cast or not named else sum(i["shortcut"][key][1] for i in infos) / named,
                cast_claims=float(np.mean([i["shortcut"][key][0] > 0 for i in infos])) if cast else None)


def pooled(per_cell: list[dict], name: str) -> float | None:
    vals = [c[name] for c in per_cell if c[name] is not None]
    return float(np.mean(vals)) if vals else None


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def main() -> None:
    machine = _common.machine()
    ap = _common.parser(__doc__)
    ap.add_argument("--variant", action="append", default=None, help="DATA:ARCH:SHORTCUT, repeatable, as benchmarks/shortcut.py; "
                    "the calibration cells are always added")
    ap.add_argument("--data-dir", default=None, help="the folder holding mnist/, fashion-mnist/, cifar10/")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=6000)
    ap.add_argument("--probe-size", type=int, default=500)
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.train_size, args.probe_size, args.test_size, args.epochs = 1, 640, 100, 200, 1
    try:
        cells = sorted(CALIBRATION) + [c for c in expand(args.variant or HELD_OUT) if c not in CALIBRATION]
    except ValueError as e:
        ap.error(str(e))
    _common.set_threads(args.threads)
    grid = settings()
    keys = [tuple(s.values()) for s in grid]
    calibration = [c for c in cells if c in CALIBRATION]
    held = [c for c in cells if c not in CALIBRATION]
    every = list(itertools.product(*GROUPING.values()))
    results = {cell: [one_seed(cell, seed, args, every) for seed in range(args.seeds)] for cell in calibration}

    def overall(group, key):
        per = [scores(c, results[c], key) for c in group]
        return {name: pooled(per, name) for name in ("found", "alarm", "precision", "cast_claims")}

    cal = {key: overall(calibration, key) for key in keys}
    rank = lambda k: ((cal[k]["found"] or 0.0) - cal[k]["alarm"], cal[k]["precision"] or 0.0)  # noqa: E731
    chosen = max(keys, key=rank)  # max keeps the first of equals: the grid starts at the rule's thresholds
    grouped = list(dict.fromkeys(k[: len(GROUPING)] for k in (RULES, chosen)))  # held out: these two settings only
    results.update({cell: [one_seed(cell, seed, args, grouped) for seed in range(args.seeds)] for cell in held})
    names = list(grid[0])
    best = sorted(keys, key=rank, reverse=True)[:8]
    sweep = _common.table([*names, "found", "alarm", "precision", "found minus alarm"],
                          [[*k, fmt(cal[k]["found"]), fmt(cal[k]["alarm"]), fmt(cal[k]["precision"]),
                            f"{rank(k)[0]:+.2f}"] for k in dict.fromkeys([RULES, *best])])
    rows = []
    for cell in cells:
        infos = results[cell]
        for label, key in (("the rule's", RULES), ("chosen", chosen)):
            s = scores(cell, infos, key)
            rows.append([":".join(cell), "calibration" if cell in CALIBRATION else "held-out", label,
                         " / ".join(f"{i['lean']:+.1f}" for i in infos), fmt(s["found"]), fmt(s["alarm"]), fmt(s["precision"]),
                         fmt(s["cast_claims"]),
                         " / ".join(f"{i['shortcut'][key][1]} of {i['shortcut'][key][0]}, {i['clean'][key][0]}" for i in infos)])
    per_cell = _common.table(["cell", "split", "setting", "leans (points, per seed)", "found", "alarm (clean models)",
                              "precision", "claims on the cast", "per seed: on artifact of suspects, clean model's suspects"], rows)
    out = {}
    for label, key in (("chosen", chosen), ("rule", RULES)):
        out.update({f"{n}_{label}": v for n, v in overall(held, key).items()} if held else
                   {f"{n}_{label}": None for n in ("found", "alarm", "precision", "cast_claims")})
    library = {**REFINED_RULE_DEFAULTS, "scale": GROUPING["scale"][0]}
    agree = ("equal the chosen setting" if all(library[n] == v for n, v in zip(names, chosen))
             else "differ from it: " + ", ".join(f"{n} {library[n]}" for n in names))
    timing = np.mean([i["t_refine"] for c in calibration for i in results[c]])
    body = (f"Chosen on the calibration cells ({', '.join(':'.join(c) for c in calibration)}): "
            + ", ".join(f"{n} {v}" for n, v in zip(names, chosen)) + "; the rule's thresholds: "
            + ", ".join(f"{n} {v}" for n, v in zip(names, RULES)) + ". The library's refined defaults "
            f"(``REFINED_RULE_DEFAULTS`` and ``refine_suspects``' scale) {agree}.\n\n"
            f"### The calibration sweep ({len(keys)} settings; the rule's thresholds, then the best eight)\n\n{sweep}\n\n"
            f"### Every cell, with the rule's thresholds and with the chosen setting\n\n{per_cell}\n\n"
            f"Sizes: {args.train_size} training images, {args.probe_size} probe, {args.test_size} attacked test images; "
            f"{args.epochs} epochs; seeds 0..{args.seeds - 1}. On the calibration cells, refining with the whole grid took "
            f"{timing:.0f} s a model ({len(every)} refine_suspects calls); on the held-out cells only the rule's and the "
            f"chosen setting's grouping are run.")
    _common.report("Calibrating the refined suspects: " + ", ".join(":".join(c) for c in cells), body, out, args.out, machine,
                   args.quick)


if __name__ == "__main__":
    main()
