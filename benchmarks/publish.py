"""Write the figures that the docs quote from the results tables into their marked blocks.

    python benchmarks/publish.py          # rewrite the blocks in docs/benchmarks.md and README.md
    python benchmarks/publish.py --check  # exit 1, naming them, when a block disagrees with the tables
    python benchmarks/publish.py --stale  # exit 1, naming them, when a table's measured code changed since its commit

Every figure comes from a results table's ``Ratios: `name=value ...` `` line (the last line the
script printed; ``n/a`` where that run could not measure it) and its ``- date:`` and ``- commit:``
header lines. A block is the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``;
everything outside the blocks is left as it is. tests/test_publish.py runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGETS = (REPO / "docs" / "benchmarks.md", REPO / "docs" / "reading-a-run.md", REPO / "README.md")
NA = "n/a"

_RATIOS = re.compile(r"^Ratios: `([^`]*)`\s*$", re.M)
_FIELD = re.compile(r"^- (date|commit|command): (.*)$", re.M)
_BLOCK = re.compile(r"(<!-- results:([\w-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


@dataclass
class Table:
    name: str
    ratios: dict[str, float | None]
    fields: dict[str, str]
    cells: tuple[tuple[str, ...], ...] = ()  # a shortcut table's summary rows (``| cell | split | ...``)
    seeds: tuple[tuple[tuple[str, ...], ...], ...] = ()  # its per-seed rows (``| seed | suspects | ...``), one group a cell


def read_table(path: Path) -> Table:
    text = path.read_text()
    lines = _RATIOS.findall(text)
    if not lines:
        raise ValueError(f"{path.name}: no 'Ratios: `...`' line")
    ratios: dict[str, float | None] = {}
    for token in lines[-1].split():
        key, sep, value = token.partition("=")
        if not (sep and key and value):
            raise ValueError(f"{path.name}: not a name=value pair: {token!r}")
        ratios[key] = None if value == NA else float(value)
    fields = {k: v.strip().strip("`") for k, v in _FIELD.findall(text)}
    cells = markdown_rows(text, "| cell | split |")
    return Table(path.stem, ratios, fields, cells[0] if cells else (), tuple(markdown_rows(text, "| seed | suspects |")))


def markdown_rows(text: str, header: str) -> list[tuple[tuple[str, ...], ...]]:
    """The body rows (cells stripped) of every markdown table in ``text`` whose header line starts with ``header``."""
    lines, found = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith(header):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(tuple(c.strip() for c in row.strip().strip("|").split("|")))
            found.append(tuple(rows))
    return found


def read_tables(results: Path = RESULTS) -> dict[str, Table]:
    return {p.stem: read_table(p) for p in sorted(results.glob("*.md"))}


# -- formatting -----------------------------------------------------------------------------------
def value(tables: dict[str, Table], table: str, key: str) -> float | None:
    t = tables.get(table)
    return None if t is None else t.ratios.get(key)


def fmt(v: float | None, kind: str) -> str:
    if v is None:
        return NA
    if kind == "x":
        return f"{v:.2f}x"
    if kind == "pct":  # an overhead (ratio - 1) as a percentage
        return f"{v * 100:.1f} %"
    if kind == "growth":  # a ratio of peaks as growth in percent
        return f"{(v - 1) * 100:.1f} %"
    if kind == "pp":
        return f"{v:+.2f} points"
    return f"{v:.3g}" if kind == "g" else format(v, kind)


def met(v: float | None, goal: str, kind: str) -> str:
    """'yes' / '**no**' against a goal like '<= 1.5' (in the row's shown unit), '' without one."""
    if not goal:
        return ""
    if v is None:
        return NA
    op, bound = goal.split()[:2]
    shown = {"pct": v * 100, "growth": (v - 1) * 100}.get(kind, v)
    ok = shown <= float(bound) if op == "<=" else shown >= float(bound)
    return "yes" if ok else "**no**"


# (label, table, key, format, goal in the shown unit)
PERFORMANCE = [
    ("one I2X record vs a plain `no_grad` forward over the probe (worst of SmallCNN 28 px, ResNet-18 64 px layer3, 224 px layer4)",
     "bench_probe_pass-cpu", "record_vs_forward", "x", "<= 1.5"),
    ("pytorch-grad-cam at feature size, one forward (the record's output) vs the record: the saving of stopping the backward at the layer",
     "bench_probe_pass-cpu", "gradcam_feature_vs_record", "x", ""),
    ("pytorch-grad-cam as a user writes it (upsampled maps + a second forward) vs the record (worst case)",
     "bench_probe_pass-cpu", "gradcam_lib_vs_record", "x", ">= 3"),
    ("scikit-learn PCA + KMeans on the same sample + predict vs FAISS, time (the same work)",
     "bench_prototypes-cpu", "sklearn_sample_vs_faiss_time", "x", ""),
    ("FAISS vs that scikit-learn fit, inertia over all vectors", "bench_prototypes-cpu", "faiss_vs_sklearn_sample_inertia", ".4f", "<= 1.02"),
    ("scikit-learn PCA + MiniBatchKMeans vs FAISS, time", "bench_prototypes-cpu", "minibatch_vs_faiss_time", "x", ""),
    ("FAISS vs MiniBatchKMeans, inertia over all vectors", "bench_prototypes-cpu", "faiss_vs_minibatch_inertia", ".4f", ""),
    ("scikit-learn PCA + KMeans on all vectors vs FAISS, time (500k x 512 -> 64, K = 128; mostly FAISS's sampling)",
     "bench_prototypes-cpu", "sklearn_vs_faiss_time", "x", ">= 5"),
    ("FAISS vs scikit-learn KMeans on all vectors, inertia over all vectors", "bench_prototypes-cpu", "faiss_vs_sklearn_inertia", ".4f", "<= 1.02"),
    ("the same time ratio at 1 thread (FAISS's and scikit-learn's OpenMP and BLAS limited together)",
     "bench_prototypes-cpu", "sklearn_vs_faiss_time_1thread", "x", ">= 5"),
    ("spread of that ratio: largest / smallest of its per-round values at 1 and 2 threads", "bench_prototypes-cpu",
     "sklearn_vs_faiss_time_spread", ".2f", ""),
    ("overhead of recording every validation, TensorBoard views included (12k-image MNIST epochs, probe 1000; 2 threads)",
     "bench_overhead-cpu", "epoch_overhead", "pct", "<= 5"),
    ("the same, 1 thread", "bench_overhead-cpu-1thread", "epoch_overhead", "pct", "<= 5"),
    ("wall time a record adds to training, in probe passes (`overhead_vs_probe_pass`; 2 threads)",
     "bench_overhead-cpu", "overhead_vs_probe_pass", ".2f", "<= 1.3"),
    ("the same, 1 thread", "bench_overhead-cpu-1thread", "overhead_vs_probe_pass", ".2f", "<= 1.3"),
    ("a record's phases on the training thread vs 0.1 (append, refit, explain, scalars; 2 threads)",
     "bench_overhead-cpu", "record_speedup_vs_0_1", "x", ""),
    ("the same, 1 thread", "bench_overhead-cpu-1thread", "record_speedup_vs_0_1", "x", ""),
    ("growth exponent of the analysis in the number of checkpoints T", "bench_overhead-cpu", "analysis_growth_exponent_T", ".2f", "<= 1.2"),
    ("growth exponent of the analysis in the probe size N", "bench_overhead-cpu", "analysis_growth_exponent_N", ".2f", "<= 1.2"),
    ("a ResNet-50 probe batch (112 px, 64 images) vs a `no_grad` forward of it, host memory", "bench_scale-cpu", "new_batch_vs_forward", "x", ""),
    ("a whole ResNet-50 record (probe pass + prototypes, largest probe) vs one batch's `no_grad` forward",
     "bench_scale-cpu", "new_record_vs_forward", "x", "<= 1.5"),
    ("growth of that record's peak from the smallest to the largest probe", "bench_scale-cpu", "record_peak_mb_growth", "growth", "<= 10"),
    ("the whole-network-graph path (re-implemented in the benchmark) vs the record, peak", "bench_scale-cpu", "old_vs_new_record", "x", ""),
    ("k-means objective of the streamed prototypes vs all vectors (`inertia_vs_full`)", "bench_scale-cpu", "inertia_vs_full", ".4f", "<= 1.02"),
    ("a whole callback record (`trainer.validate` with `I2XCallback` at its defaults, largest probe) vs one batch's `no_grad` forward, peak",
     "bench_scale-cpu", "callback_record_vs_forward", "x", "<= 1.6"),
    ("growth of the callback record's peak from the smallest to the largest probe", "bench_scale-cpu", "callback_record_growth", "growth", "<= 10"),
    ("DDP: bytes each rank receives per record, streamed vs whole-activation gather (2 gloo ranks, largest probe)",
     "bench_distributed-cpu", "new_vs_old_bytes_w2", "x", ""),
    ("the same, 4 ranks", "bench_distributed-cpu", "new_vs_old_bytes_w4", "x", ""),
    ("DDP: growth exponent in N of the bytes received per rank, streamed gather (2 ranks; the whole gather's is 1)",
     "bench_distributed-cpu", "bytes_growth_new_w2", ".2f", "<= 0.9"),
    ("the same, 4 ranks", "bench_distributed-cpu", "bytes_growth_new_w4", ".2f", "<= 0.9"),
]


WHY_MISSED = {  # (table, key): why the goal is missed, shown only while it is
    ("bench_probe_pass-cpu", "gradcam_lib_vs_record"):
        "the worst case is SmallCNN, whose target layer is its last convolution: the early stop has little to save (the ResNets pass)",
    ("bench_prototypes-cpu", "sklearn_vs_faiss_time_1thread"):
        "FAISS gains about 2x from the second thread, scikit-learn little; at the same work the two are equal: the lead is FAISS's sampling",
    ("bench_overhead-cpu", "epoch_overhead"): "training holds both cores, so the background analysis slows it",
    ("bench_overhead-cpu-1thread", "epoch_overhead"): "within noise: that run's paired rounds range over about 20 points",
    ("bench_overhead-cpu", "overhead_vs_probe_pass"):
        "wall time on 2 busy cores; on the training thread a record costs about one probe pass (the table's last column)",
    ("bench_overhead-cpu-1thread", "overhead_vs_probe_pass"): "the same, with a core nominally free; noisy (see above)",
    ("bench_scale-cpu", "new_record_vs_forward"): "the probe pass itself peaks at about 2x the forward",
    ("bench_scale-cpu", "record_peak_mb_growth"):
        "one process differs from the next by up to 55 % at the same size: medians of 3 cannot resolve 10 %",
    ("bench_scale-cpu", "callback_record_vs_forward"): "the probe pass (about 2x the forward) plus the analysis's k-means, HDBSCAN and ridge",
    ("bench_scale-cpu", "callback_record_growth"):
        "what is resident before the callback's first step (the phase table's `other`, Lightning's validate loop) grows about as much",
}


def performance_goals(tables: dict[str, Table]) -> str:
    """The README's table: every ratio that has a goal, whether it is met, and why not."""
    rows = ["| ratio | measured | goal | met | why missed |", "|---|---|---|---|---|"]
    for label, table, key, kind, goal in PERFORMANCE:
        if not goal:
            continue
        v = value(tables, table, key)
        verdict = met(v, goal, kind)
        shown_goal = f"{goal} %" if kind in ("pct", "growth") else goal
        why = WHY_MISSED.get((table, key), "not recorded") if verdict == "**no**" else ""
        rows.append(f"| {label} (`{table}`) | {fmt(v, kind)} | {shown_goal} | {verdict} | {why} |")
    return "\n".join(rows)


def performance(tables: dict[str, Table]) -> str:
    rows = ["| ratio | measured | goal | met | table |", "|---|---|---|---|---|"]
    for label, table, key, kind, goal in PERFORMANCE:
        v = value(tables, table, key)
        shown_goal = f"{goal} %" if goal and kind in ("pct", "growth") else goal
        rows.append(f"| {label} | {fmt(v, kind)} | {shown_goal} | {met(v, goal, kind)} | `{table}` |")
    return "\n".join(rows)


def faithfulness(tables: dict[str, Table]) -> str:
    f = lambda k, kind: fmt(value(tables, "faithfulness-cpu", k), kind)  # noqa: E731
    hi, lo = value(tables, "faithfulness-cpu", "igos_pp_minus_gradcam_deletion_ci_high"), value(tables, "faithfulness-cpu",
                                                                                               "igos_pp_minus_gradcam_insertion_ci_low")
    verdict = NA if hi is None or lo is None else "met" if hi < 0 and lo > 0 else "**not met**"
    return (f"Last line of `faithfulness-cpu`: iGOS++ / GradCAM mean deletion AUC {f('igos_pp_vs_gradcam_deletion', '.3f')} "
            f"(worse model; below 1 favours iGOS++), insertion {f('igos_pp_vs_gradcam_insertion', '.3f')}, under the optimiser's own "
            f"baseline; the paired difference iGOS++ - GradCAM has a 95 % interval reaching up to "
            f"{f('igos_pp_minus_gradcam_deletion_ci_high', '+.4f')} on deletion and down to {f('igos_pp_minus_gradcam_insertion_ci_low', '+.4f')} "
            f"on insertion (worse model), so the goal (both intervals excluding 0 in iGOS++'s favour, on both models) is {verdict}; "
            f"iGOS++ costs {f('igos_pp_probe_passes', '.0f')} probe passes per image; the smallest "
            f"(insertion - deletion) gap over random {f('min_gap_over_random', '+.3f')}; the batched metric is "
            f"{f('batched_vs_loop', '.1f')}x faster than a per-image loop (and equal to it to 1e-6: the script fails "
            f"otherwise) and costs {f('metric_probe_passes', '.0f')} probe passes.")


def sag(tables: dict[str, Table]) -> str:
    f = lambda k, kind: fmt(value(tables, "sag-cpu", k), kind)  # noqa: E731
    return (f"One image's SAG took a median {f('sag_seconds_per_image_cnn', '.2f')} s on a 4x4 grid and "
            f"{f('sag_seconds_per_image_cnn_proto', '.2f')} s on prototype regions (SmallCNN; goal: under 2 s), "
            f"{f('sag_seconds_per_image_resnet', '.2f')} s on ResNet-18. Images with more than one MSE: "
            f"{f('multi_mse_share_cnn', '.2f')} (grid), {f('multi_mse_share_cnn_proto', '.2f')} (prototypes), "
            f"{f('multi_mse_share_resnet', '.2f')} (ResNet-18). As a measure it costs "
            f"{f('sag_measure_cost_probe_passes', '.1f')} probe passes of a 1000-image probe per record on the demo CNN.")


def shortcut(tables: dict[str, Table]) -> str:
    out = []
    for table, label in (("shortcut-decoy-mnist-cpu", "Decoy MNIST"), ("shortcut-decoy-fmnist-cpu", "Decoy Fashion-MNIST")):
        f = lambda k, kind, t=table: fmt(value(tables, t, k), kind)  # noqa: E731
        out.append(f"{label}: discovery rate {f('discovery_rate', '.2f')} (suspect precision {f('suspect_precision', '.2f')}), "
                   f"repair gap {f('repair_gap', '.2f')} points (RRR oracle {f('rrr_gap', '.2f')}), share of the gap closed "
                   f"{f('share_closed', '.2f')} (RRR {f('share_closed_rrr', '.2f')}), control drop {f('control_drop', '.2f')}")
    return "Last lines: " + "; ".join(out) + "."


FAMILY_TABLES = ("shortcut-family-mnist-cpu", "shortcut-family-fmnist-cpu")
"""The benchmark family's tables: the flatten, GAP and max-pooled heads x swatch, tag and cast of one data set."""
MIN_GAP = 1.0
"""Points below which the plain model does not lean on the shortcut: no discovery or repair is asked for."""


def shortcut_family(tables: dict[str, Table]) -> str:
    """Every cell of the family's tables against the goals: discovery where the model leans on a
    localised shortcut, abstention on the cast (where any suspect counts as on the artifact), no
    suspect on the clean model, the share of the gap closed and the control drop."""
    rows = ["| cell | split | gap, ceiling - plain (points) | discovery (goal 1.00) | suspect precision | IoU | "
            "plain / repaired / ceiling attacked-test (%) | share closed (goal 0.80; RRR oracle) | "
            "clean model: seeds with a suspect (goal 0) | control drop, points (goal <= 0.3) | "
            "with the refinement: discovery, precision; clean seeds with a refined suspect | table |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    no = lambda ok: "" if ok else ": **no**"  # noqa: E731
    for table in FAMILY_TABLES:
        t = tables.get(table)
        if t is None:
            continue
        for c, seeds in zip(t.cells, t.seeds):
            cell, split, disc, prec, iou, plain, repaired, ceiling, _clean, share, _control, rrr = c[:12]
            gap = float(ceiling.split()[0]) - float(plain.split()[0])
            leans, cast = gap >= MIN_GAP, cell.endswith(":cast")
            if cast:
                abstained = 1 - float(disc)
                disc, prec, iou = f"not localised: abstained in {abstained:.2f} of seeds{no(abstained == 1)}", "-", "-"
            elif leans:
                disc += no(float(disc) == 1)
            else:
                disc += " (not asked: no gap)"
            share = share + no(float(share) >= 0.8) if leans and not cast else share
            false_alarms = sum(1 for s in seeds if s[7] != "[]")
            refined = "not measured"
            if len(c) > 17:  # tables made before the refinement was measured lack its columns
                refined_alarms = sum(1 for s in seeds if s[12] != "[]")
                refined = f"{c[15]}, {c[16]}; {refined_alarms} of {len(seeds)}{no(refined_alarms == 0)}"
            rows.append(f"| {cell} | {split} | {gap:+.1f} | {disc} | {prec} | {iou} | {plain} / {repaired} / {ceiling} | "
                        f"{share} ({rrr}) | {false_alarms} of {len(seeds)}{no(false_alarms == 0)} | "
                        f"{c[14]}{no(float(c[14]) <= 0.3)} | {refined} | `{table}` |")
    return "\n".join(rows) if len(rows) > 2 else "No family table is committed."


def shortcut_during(tables: dict[str, Table]) -> str:
    """The repair during training against after it (``shortcut-during*`` tables: the held-out cells,
    and the settings tried on the calibration cell), per cell, against the family's 0.80 goal, at an
    equal total number of epochs."""
    names = sorted((n for n in tables if n.startswith("shortcut-during") and tables[n].cells), key=lambda n: ("calibration" in n, n))
    if not names:
        return "No repair-during-training table is committed."
    rows = ["| cell | split | penalty ratio, layers | share closed: during / after / one more plain epoch (goal 0.80) | "
            "during minus after, attacked-test points | seeds switched on | first record, fraction of the run | table |",
            "|---|---|---|---|---|---|---|---|"]
    for name in names:
        words = tables[name].fields.get("command", "").split()
        option = lambda flag, default: words[words.index(flag) + 1] if flag in words[:-1] else default  # noqa: E731
        setting = f"{option('--penalty-ratio', '1')}, {option('--layers', 'after')}"
        for cell, split, during, after, more, diff, on, first in (c[:8] for c in tables[name].cells):
            best = max(float(during), float(after))
            rows.append(f"| {cell} | {split} | {setting} | {during} / {after} / {more}{'' if best >= 0.8 else ': **no**'} | "
                        f"{float(diff):+.1f} | {on} | {first} | `{name}` |")
    return "\n".join(rows)


def family_discovery(tables: dict[str, Table]) -> str:
    """'a of b': the family's held-out cells with a localised shortcut the plain model leans on, and how many of them every seed found."""
    found = asked = 0
    for table in FAMILY_TABLES:
        for c in tables[table].cells if table in tables else ():
            gap = float(c[7].split()[0]) - float(c[5].split()[0])
            if c[1] == "held-out" and not c[0].endswith(":cast") and gap >= MIN_GAP:
                asked += 1
                found += float(c[2]) == 1
    return f"{found} of {asked}"


def files(tables: dict[str, Table]) -> str:
    rows = ["| table | date | commit | last line |", "|---|---|---|---|"]
    for name, t in tables.items():
        line = " ".join(f"{k}={NA if v is None else format(v, '.4g')}" for k, v in t.ratios.items())
        rows.append(f"| [{name}](results/{name}.md) | {t.fields.get('date', 'not recorded')[:10]} | "
                    f"{t.fields.get('commit', 'not recorded')} | `{line}` |")
    return "\n".join(rows)


def status(tables: dict[str, Table]) -> str:
    v = lambda t, k, kind: fmt(value(tables, t, k), kind)  # noqa: E731
    return (f"recording every validation added {v('bench_overhead-cpu', 'epoch_overhead', 'pct')} to a short MNIST fit "
            f"(goal: 5 %) and a ResNet-50 record's memory peak grew {v('bench_scale-cpu', 'record_peak_mb_growth', 'growth')} "
            f"from the smallest to the largest probe (goal: 10 %); iGOS++ / GradCAM deletion AUC "
            f"{v('faithfulness-cpu', 'igos_pp_vs_gradcam_deletion', '.2f')} (below 1 would favour iGOS++); shortcut discovery "
            f"{v('shortcut-decoy-fmnist-cpu', 'discovery_rate', '.2f')} on Decoy Fashion-MNIST, and the automatic repair "
            f"{v('shortcut-decoy-mnist-cpu', 'repair_gap', '.1f')} / {v('shortcut-decoy-fmnist-cpu', 'repair_gap', '.1f')} "
            "points below the clean ceiling (goal: within 2); on the held-out cells of the shortcut family where the plain model "
            f"leans on a localised shortcut, every seed found it in {family_discovery(tables)} (goal: all); "
            "on the paper's fine-tuning protocol, scaled to a CPU, "
            + protocol_status(tables))


PROTOCOL_TABLES = (("paper_protocol-mnist-cpu", "MNIST", 4), ("paper_protocol-cifar10-subset-cpu", "the CIFAR-10 subset", 2))
"""The paper-protocol tables, and the seeds in which curated -> full must beat full -> full (the goal)."""


def protocol_status(tables: dict[str, Table]) -> str:
    """The paper protocol's headline, by data set and uncertain rule (the default rule's figures first)."""
    parts = []
    for table, data, _ in PROTOCOL_TABLES:
        for suffix, rule in (("", "the edge rule (the default)"), ("_difference", "the difference rule")):
            r = value(tables, table, f"confusions_curated_full_vs_full_full{suffix}")
            fewer, n = value(tables, table, f"seeds_curated_fewer{suffix}"), value(tables, table, f"seeds_compared{suffix}")
            seeds = "" if fewer is None or n is None else f", fewer in {fewer:.0f} of {n:.0f} seeds"
            parts.append(f"{data}, {rule}: curated -> full had {r:.2f}x the targeted confusions of full -> full{seeds}" if r is not None
                         else f"{data}, {rule}: the ratio is n/a (too few seeds had a pair, or full -> full had no confusion)")
    return "; ".join(parts) + " (below 1 is the paper's direction)."


def protocol(tables: dict[str, Table]) -> str:
    """The paper protocol against its goal, per data set and rule: every strategy's confusion ratio,
    the seeds where curated -> full beat full -> full, the accuracy cost and the flagged share."""
    rows = ["| data | rule | curated / full confusions | seeds fewer (goal) | accuracy, curated - full | mask / full | "
            "penalise / full | flagged share of the pair's images | table |", "|---|---|---|---|---|---|---|---|---|"]
    for table, data, need in PROTOCOL_TABLES:
        for suffix, rule in (("", "edges"), ("_difference", "difference")):
            v = lambda k, kind, s=suffix, t=table: fmt(value(tables, t, k + s), kind)  # noqa: E731
            fewer, n = value(tables, table, f"seeds_curated_fewer{suffix}"), value(tables, table, f"seeds_compared{suffix}")
            seeds = NA if fewer is None or n is None else f"{fewer:.0f} of {n:.0f} (>= {need})" + ("" if fewer >= need else ": **no**")
            rows.append(f"| {data} | `{rule}` | {v('confusions_curated_full_vs_full_full', '.2f')} | {seeds} | "
                        f"{v('accuracy_delta_curated_full_vs_full_full', 'pp')} | {v('confusions_mask_full_vs_full_full', '.2f')} | "
                        f"{v('confusions_penalise_full_vs_full_full', '.2f')} | {v('flagged_share', 'pct')} | `{table}` |")
    return "\n".join(rows)


def explainers(tables: dict[str, Table]) -> str:
    """The three explainers' headline figures against their goals: channels, x-features, the twin."""
    v = lambda t, k, kind: fmt(value(tables, t, k), kind)  # noqa: E731
    acc = lambda data: (f"{v('infodisent-cpu', data + '_backbone_accuracy', '.3f')} / {v('infodisent-cpu', data + '_infodisent_accuracy', '.3f')}"  # noqa: E731
                        f" / {v('infodisent-cpu', data + '_epic_accuracy', '.3f')}")
    return (f"InfoDisent (`infodisent-cpu`), backbone / InfoDisent head / EPIC accuracy: MNIST {acc('mnist')}, Fashion-MNIST "
            f"{acc('fashionmnist')}, CIFAR-10 subset {acc('cifar10')} (goals: the head within 1, 1 and 3 points; EPIC equal); "
            f"Decoy MNIST classes whose top channel peaks in the swatch in >= 90 % of images: "
            f"{v('infodisent-cpu', 'decoy_channel_classes_at_0.9', '.0f')} of 10 (k-means prototypes: "
            f"{v('infodisent-cpu', 'decoy_kmeans_classes_at_0.9', '.0f')}). X-features (`xnn-cpu`): the lowest held-out R^2 of a "
            f"class score {v('xnn-cpu', 'min_r2_mnist', '.3f')} on MNIST (goal: >= 0.95 with n_x <= 5; n_x up to "
            f"{v('xnn-cpu', 'max_n_x_mnist', '.0f')}), {v('xnn-cpu', 'min_r2_fashion_mnist', '.3f')} on Fashion-MNIST, "
            f"{v('xnn-cpu', 'min_r2_cifar10_subset', '.3f')} on the CIFAR-10 subset; without the reconstruction term "
            f"{v('xnn-cpu', 'ablation_r2_no_rec', '.3f')} (ablation, MNIST classes 0-2). Twin (`twin-cpu`): fidelity at least "
            f"{v('twin-cpu', 'chain_fidelity_min', '.3f')} on the planted chain and {v('twin-cpu', 'mnist_fidelity', '.3f')} on MNIST "
            f"(goal: 0.95); the planted graph exactly on a share {v('twin-cpu', 'chain_graph_exact_share', '.2f')} of the seeds "
            f"(goal: 1), the swapped roles {'yes' if value(tables, 'twin-cpu', 'swap_graph_exact') else 'no'}.")


def scripts(_tables: dict[str, Table]) -> str:
    """benchmarks/README.md's table of scripts, the one copy docs/benchmarks.md shows."""
    text = (REPO / "benchmarks" / "README.md").read_text()
    return "\n".join(line for line in text.split("\n## ")[0].splitlines() if line.startswith("|"))


BLOCKS: dict[str, Callable[[dict[str, Table]], str]] = {
    "scripts": scripts, "performance": performance, "faithfulness": faithfulness, "sag": sag, "shortcut": shortcut, "shortcut-family": shortcut_family, "shortcut-during": shortcut_during, "files": files, "status": status,
    "explainers": explainers, "protocol": protocol, "performance-goals": performance_goals,
}


def render(text: str, tables: dict[str, Table]) -> tuple[str, list[str]]:
    """``text`` with every marked block rewritten; the names of the blocks that changed."""
    changed: list[str] = []

    def one(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise ValueError(f"unknown results block {name!r} (known: {', '.join(BLOCKS)})")
        body = BLOCKS[name](tables).rstrip("\n") + "\n"
        if body != m.group(3):
            changed.append(name)
        return m.group(1) + body + m.group(4)

    return _BLOCK.sub(one, text), changed


def blocks_in(text: str) -> list[str]:
    return [m.group(2) for m in _BLOCK.finditer(text)]


def print_freshness(tables: dict[str, Table]) -> int:
    from _freshness import report

    verdicts = report(tables)
    for f in verdicts:
        why = f" ({f.reason})" if f.reason else f": changed since: {', '.join(f.changed)}" if f.changed else ""
        print(f"{f.table}: {f.verdict} at {f.commit}{why}")
    return 0 if all(f.verdict == "current" for f in verdicts) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block disagrees with the tables")
    ap.add_argument("--stale", action="store_true",
                    help="change nothing; list each table's freshness (benchmarks/_freshness.py) and exit 1 when one is not current")
    args = ap.parse_args(argv)
    tables = read_tables()
    if args.stale:
        return print_freshness(tables)
    stale = []
    for path in TARGETS:
        text = path.read_text()
        new, changed = render(text, tables)
        stale += [f"{path.relative_to(REPO)}: {name}" for name in changed]
        if changed and not args.check:
            path.write_text(new)
    if args.check and stale:
        print("blocks that disagree with benchmarks/results/ (run python benchmarks/publish.py):\n  " + "\n  ".join(stale))
        return 1
    print(("updated: " + ", ".join(stale)) if stale else "every results block agrees with the tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
