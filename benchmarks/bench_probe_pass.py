"""What one I2X checkpoint's probe pass costs, against a plain forward and against pytorch-grad-cam.

    python benchmarks/bench_probe_pass.py [--quick] [--out FILE] [--repeats R] [--threads N]

For each model (random-init weights, eval mode, random inputs: the cost does not depend on them):

  forward      plain eval forward over the probe set under torch.no_grad (the floor)
  record       what I2XCallback records per checkpoint through the record pipeline, prototype
               fitting excluded: lightning_i2x.probe_pass(...) (which iterates
               lightning_i2x.saliency.probe_batches: one forward, autograd recording from the target
               layer on, the backward stopping there), then the activations, maps and
               confidences moved to NumPy as Recorder.append does
  gradcam_feat the same output from pytorch-grad-cam: GradCAM(model, [layer]) asked for maps at the
               layer's h x w (as tests/test_cam.py does: no upsampling), the activations and the
               confidences taken from that same forward (no second forward). Its backward runs
               through the whole network: the gap to ``record`` is what stopping the backward at
               the target layer saves, on its own. Its maps are checked equal to the record's.
  gradcam_lib  what a user would otherwise write: pytorch_grad_cam.GradCAM(model, [layer]) with
               ClassifierOutputTarget targets per batch (maps upsampled to the input size, the
               library's default), plus a separate no_grad forward with a forward hook for the
               activations and the confidences

Models: SmallCNN at 28 px (target ``features``, 7x7), torchvision resnet18 (num_classes=10) at
64 px with target ``layer3`` (4x4: at 32 px layer4's map is 1x1 and layer3's 2x2) and at 224 px
with target ``layer4`` (7x7).

Last line: record_vs_forward (worst model: max of record/forward), gradcam_lib_vs_record (worst
model: min of gradcam_lib/record) and gradcam_feature_vs_record (worst model: min of
gradcam_feat/record).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from lightning_i2x import ProbePassOptions, probe_pass
from lightning_i2x._model import preserved_rng

import _common
from demo_models import SmallCNN


@dataclass
class Case:
    name: str
    build: Callable[[], torch.nn.Module]
    layer: str
    shape: tuple[int, int, int]
    n: int
    batch_size: int
    rounds_factor: int = 1  # cheap cases get more rounds: their times are the noisiest


def cases(quick: bool) -> list[Case]:
    resnet = lambda: torchvision.models.resnet18(num_classes=10)  # noqa: E731
    if quick:
        return [
            Case("SmallCNN 28 px", SmallCNN, "features", (1, 28, 28), 32, 16),
            Case("resnet18 64 px", resnet, "layer3", (3, 64, 64), 16, 8),
            Case("resnet18 224 px", resnet, "layer4", (3, 224, 224), 2, 2),
        ]
    return [
        Case("SmallCNN 28 px", SmallCNN, "features", (1, 28, 28), 1000, 256, rounds_factor=3),
        Case("resnet18 64 px", resnet, "layer3", (3, 64, 64), 1000, 256),
        Case("resnet18 224 px", resnet, "layer4", (3, 224, 224), 64, 32),
    ]


def forward_pass(model, images, batch_size):
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            model(images[s : s + batch_size])


def record_pass(model, layer, images, labels, batch_size):
    """The record pipeline's probe pass (``lightning_i2x.probe_pass``), its evidence copied to the
    host as ``Recorder.append`` does before fitting prototypes (prototype fitting excluded)."""
    with preserved_rng():
        ev = probe_pass(model, layer, images, labels, options=ProbePassOptions(batch_size=batch_size))
        feats = ev.activations.permute(0, 2, 3, 1).reshape(-1, ev.activations.shape[1])
        return ev.cams.cpu().numpy(), ev.confidences.cpu().numpy(), feats.cpu().numpy()


def rescaled(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(maps.shape[0], -1).max(1).reshape(-1, *([1] * (maps.ndim - 1)))
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0.0)


def library_feature_pass(model, layer, images, labels, batch_size, feature_hw):
    """The record's output from pytorch-grad-cam: maps at the layer's h x w (no upsampling), the
    activations and confidences from the same forward (the library keeps both)."""
    cam = GradCAM(model=model, target_layers=[layer])
    h, w = feature_hw
    cam.get_target_width_height = lambda _x: (w, h)
    maps, feats, confs = [], [], []
    try:
        for s in range(0, images.shape[0], batch_size):
            x, y = images[s : s + batch_size], labels[s : s + batch_size]
            maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in y]))
            acts = cam.activations_and_grads.activations[-1]
            feats.append(acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1]).numpy())
            confs.append(torch.softmax(cam.outputs.detach(), dim=1).cpu().numpy())
    finally:
        cam.activations_and_grads.release()
    return np.concatenate(maps), np.concatenate(confs), np.concatenate(feats)


def library_pass(model, layer, images, labels, batch_size):
    """The same evidence with pytorch-grad-cam as a user would write it."""
    cam = GradCAM(model=model, target_layers=[layer])
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    maps, feats, confs = [], [], []
    try:
        for s in range(0, images.shape[0], batch_size):
            x, y = images[s : s + batch_size], labels[s : s + batch_size]
            maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in y]))
            captured.clear()
            with torch.no_grad():
                logits = model(x)
            acts = captured[-1]
            feats.append(acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1]).cpu().numpy())
            confs.append(torch.softmax(logits, dim=1).cpu().numpy())
            captured.clear()
    finally:
        handle.remove()
        cam.activations_and_grads.release()
    return np.concatenate(maps), np.concatenate(confs), np.concatenate(feats)


def main(argv=None) -> None:
    args = _common.parser(__doc__).parse_args(argv)
    _common.set_threads(args.threads)
    info = _common.machine()
    repeats = args.repeats or (1 if args.quick else 5)
    torch.manual_seed(0)
    rows, rec_vs_fwd, lib_vs_rec, feat_vs_rec = [], [], [], []
    for case in cases(args.quick):
        print(f"{case.name}: N={case.n}, batch {case.batch_size}", file=sys.stderr, flush=True)
        model = case.build().eval()
        layer = model.get_submodule(case.layer)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(case.n, *case.shape, generator=g)
        labels = torch.randint(0, 10, (case.n,), generator=g)
        shapes: list[tuple[int, ...]] = []
        hook = layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])) and None)
        with torch.no_grad():
            model(images[:1])
        hook.remove()
        d, fh, fw = shapes[0]
        # the same output, checked once outside the timing: maps, confidences, activations
        ours, theirs = record_pass(model, layer, images, labels, case.batch_size), library_feature_pass(
            model, layer, images, labels, case.batch_size, (fh, fw))
        # maps rescaled to max 1 per image first: on random-init weights the raw maps are tiny and the
        # normalisation's 1e-7 (both sides use it) moves their maxima apart by more than rounding
        diffs = [float(np.abs(rescaled(ours[0]) - rescaled(theirs[0])).max())]
        diffs += [float(np.abs(a - b).max()) for a, b in zip(ours[1:], theirs[1:])]
        if max(diffs) > 1e-4:
            raise SystemExit(f"{case.name}: pytorch-grad-cam at feature size differs from the record by {max(diffs):.3g} "
                             "(maps, confidences, activations): not the same output")
        rounds = repeats * case.rounds_factor
        times = _common.interleaved(
            {
                "forward": lambda: forward_pass(model, images, case.batch_size),
                "record": lambda: record_pass(model, layer, images, labels, case.batch_size),
                "gradcam_feat": lambda: library_feature_pass(model, layer, images, labels, case.batch_size, (fh, fw)),
                "gradcam_lib": lambda: library_pass(model, layer, images, labels, case.batch_size),
            },
            rounds,
        )
        med = {k: _common.median(v) for k, v in times.items()}
        r1, r2, r3 = med["record"] / med["forward"], med["gradcam_lib"] / med["record"], med["gradcam_feat"] / med["record"]
        rec_vs_fwd.append(r1)
        lib_vs_rec.append(r2)
        feat_vs_rec.append(r3)
        rows.append([
            case.name, f"{case.n} / {case.batch_size}", rounds, f"{d}x{fh}x{fw}",
            f"{_common.fmt_s(med['forward'])} ({_common.spread(times['forward'])})",
            f"{_common.fmt_s(med['record'])} ({_common.spread(times['record'])})",
            f"{_common.fmt_s(med['gradcam_feat'])} ({_common.spread(times['gradcam_feat'])})",
            f"{_common.fmt_s(med['gradcam_lib'])} ({_common.spread(times['gradcam_lib'])})",
            f"{r1:.2f}", f"{r3:.2f}", f"{r2:.1f}", f"{max(diffs):.1e}",
        ])
    header = ["model", "probe N / batch", "rounds", "target layer map", "forward (floor)", "record (I2X)",
              "pytorch-grad-cam, feature size, one forward", "pytorch-grad-cam as a user writes it", "record / forward",
              "grad-cam feature size / record", "grad-cam as a user / record", "max abs diff, record vs grad-cam feature size"]
    body = "\n".join([
        "Median of the interleaved rounds (forward, record, pytorch-grad-cam at feature size, pytorch-grad-cam as a user "
        "writes it, in turn) after one warm-up round; min-max in brackets. Random-init weights, eval mode, random inputs; "
        "target layer `features` (SmallCNN), `layer3` (resnet18 at 64 px) or `layer4` (resnet18 at 224 px), "
        "num_classes=10.",
        "",
        _common.table(header, rows),
        "",
        "- forward: `model(x)` under `torch.no_grad()` over the probe set, batch by batch.",
        "- record: what `I2XCallback` records through the record pipeline: `lightning_i2x.probe_pass(...)`, which iterates "
        "`lightning_i2x.saliency.probe_batches` (the backward stops at the target layer), activations/maps/confidences "
        "to NumPy as `Recorder.append` does before fitting prototypes (prototype fitting excluded).",
        "- pytorch-grad-cam, feature size: `GradCAM(model, [layer])` asked for maps at the layer's h x w (no upsampling), "
        "activations and confidences from the same forward: the record's output (checked equal, last column), with the "
        "backward through the whole network. Its ratio to the record is the saving of stopping the backward at the layer.",
        "- pytorch-grad-cam as a user writes it: `GradCAM(model, [layer])` with `ClassifierOutputTarget` targets (maps "
        "upsampled to the input size, the library's default) plus a separate `no_grad` forward for activations and "
        "confidences.",
    ])
    _common.report(
        "I2X probe pass: record vs plain forward vs pytorch-grad-cam",
        body,
        {"record_vs_forward": max(rec_vs_fwd), "gradcam_lib_vs_record": min(lib_vs_rec),
         "gradcam_feature_vs_record": min(feat_vs_rec)},
        args.out, info, args.quick,
    )


if __name__ == "__main__":
    main()
