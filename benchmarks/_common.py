"""Shared helpers for the benchmark scripts: interleaved timing, the machine description, output.

Every script times the variants it compares interleaved (A B C A B C ...) after a warm-up round,
takes medians, prints a markdown table and, as its last line, ratios as ``name=value`` pairs.
Ratios are the claim; absolute times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "examples"):  # run as `python benchmarks/NAME.py` from a checkout; demo models and data
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one timed round: a smoke test, not a measurement")
    ap.add_argument("--out", default=None, help="also write the markdown table, the machine and the command to this file")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds after the warm-up (default: per script)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
    return ap


def set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def train_classifier(model, x, y, epochs: int, lr: float, batch: int = 128, seed: int = 0):
    """The benchmarks' plain training: Adam at ``lr`` (no schedule), cross-entropy, ``epochs``
    passes over (x, y) in batches of ``batch`` shuffled by a generator seeded ``seed``. Returns
    the model in eval mode."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch):
            idx = perm[s : s + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def resnet18_32px(num_classes: int = 10):
    """torchvision's ResNet-18 adapted to 32 px images: a 3 x 3 stride-1 first convolution, the
    max-pool kept, so the stages see 16 x 16 .. 2 x 2 (``layer4``: 512 x 2 x 2)."""
    import torchvision
    from torch import nn

    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    return m


def flip_crop(x, generator=None, pad: int = 4):
    """The standard CIFAR augmentation on a batch: each image flipped left-right with probability
    1/2, then one random crop of the reflect-padded batch (offsets from ``generator``, or torch's
    global RNG, which Lightning's ``seed_everything`` seeds)."""
    import torch
    import torch.nn.functional as F

    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    h, w = x.shape[-2:]
    i, j = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
    return F.pad(x, (pad, pad, pad, pad), mode="reflect")[..., i : i + h, j : j + w]


def train_cifar_resnet18(x, y, epochs: int = 15, lr: float = 2e-3, batch: int = 128, seed: int = 0):
    """``resnet18_32px`` trained as the benchmarks' CIFAR model that is not weak: ``flip_crop``,
    Adam at weight decay 5e-4 on a one-cycle schedule peaking at ``lr``, cross-entropy, batches of
    ``batch`` shuffled by a generator seeded ``seed`` (which also draws the augmentation; the
    weights from ``torch.manual_seed(seed)``). On the whole CIFAR-10 subset (5,000 images) 15 epochs
    reach about 70 % test accuracy (72.8 % after 20 at seed 0). Returns the model in eval mode."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = resnet18_32px(int(y.max()) + 1)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * math.ceil(len(x) / batch))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch):
            idx = perm[s : s + batch]
            opt.zero_grad()
            F.cross_entropy(model(flip_crop(x[idx], g)), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# the distributions whose versions every results table records (those installed; read from their
# metadata, nothing imported)
PACKAGES = ("lightning-i2x", "torch", "torchvision", "lightning", "numpy", "scipy", "scikit-learn", "faiss-cpu", "faiss-gpu",
            "grad-cam", "hdbscan", "quantus", "timm")

# what counts as a change to the measured code: a tree dirty elsewhere (docs, tests) measures the same
DIRTY_PATHS = ("lightning_i2x", "benchmarks", "examples")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit() -> str:
    """``git rev-parse --short HEAD``, plus ``+dirty`` when lightning_i2x/, benchmarks/ (not its
    results/) or examples/ have uncommitted changes; ``unknown (no git)`` outside a git checkout (a shallow clone works)."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (no git)"
    # results tables are outputs, not measured code: a table written earlier in a series of runs
    # does not make the next one dirty
    status = _git("status", "--porcelain", "--", *DIRTY_PATHS, ":(exclude)benchmarks/results")
    if status is None:
        return f"{head} (dirty state unknown)"
    return head + ("+dirty" if status else "")


def versions() -> str:
    """``name version`` of every installed distribution in PACKAGES, comma separated."""
    from importlib import metadata

    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def machine() -> dict[str, str]:
    """What the numbers were measured on and with: machine, commit, package versions, load at start."""
    import numpy as np
    import torch

    return {
        "commit": commit(),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        "device": "cpu",
        "numpy": np.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "packages": versions(),
        "load average at start": load_average(),
    }


def command() -> str:
    """The command line as it was typed (the script relative to the working directory)."""
    script = sys.argv[0]
    try:
        rel = os.path.relpath(script)
        script = rel if not rel.startswith("..") else script
    except ValueError:
        pass
    return shlex.join(["python", script, *sys.argv[1:]])


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, log: bool = True) -> dict[str, list[float]]:
    """Run ``warmup`` untimed rounds, then ``repeats`` timed rounds of every variant in turn
    (A B C A B C ...); returns the seconds of each variant per round."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
        if log:
            shown = "  ".join(f"{k}={v[-1]:.3f}s" for k, v in times.items())
            print(f"  round {r + 1}/{repeats}: {shown}", file=sys.stderr, flush=True)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> str:
    """min-max of the timed rounds, for the table."""
    return f"{fmt_s(min(xs))}-{fmt_s(max(xs))}" if len(xs) > 1 else "-"


def fmt_s(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def loglog_slope(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(size): the growth exponent."""
    import numpy as np

    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)[0])


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


NOT_AVAILABLE = "n/a"


def ratio_line(ratios: dict[str, float | None]) -> str:
    """``name=value`` pairs; None (a figure this run could not measure, which the report says why)
    is written ``n/a``; anything else must be a finite number."""
    for k, v in ratios.items():
        if v is None:
            continue
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"ratio {k}={v!r} is not a finite number")
    return " ".join(f"{k}={NOT_AVAILABLE if v is None else format(v, '.4g')}" for k, v in ratios.items())


def parse_ratio_line(line: str) -> dict[str, float | None]:
    """The inverse of ratio_line (``n/a`` -> None)."""
    pairs: dict[str, float | None] = {}
    for token in line.split():
        name, sep, value = token.partition("=")
        if not (sep and name and value):
            raise ValueError(f"not a name=value pair: {token!r} in {line!r}")
        pairs[name] = None if value == NOT_AVAILABLE else float(value)
    return pairs


def report(title: str, body: str, ratios: dict[str, float | None], out: str | None, info: dict[str, str], quick: bool) -> None:
    """Print the markdown report, write it to ``out`` with the date, commit, machine, package
    versions, load average at start and end and command, and print the ratio line last. The file's
    ``Ratios:`` line is what benchmarks/publish.py reads."""
    line = ratio_line(ratios)
    text = f"# {title}\n\n{body.rstrip()}\n\nRatios: `{line}`\n"
    print(text, flush=True)
    if out:
        info = dict(info)
        info.setdefault("commit", commit())
        info.setdefault("packages", versions())
        info.setdefault("load average at start", NOT_AVAILABLE)
        head = [
            f"# {title}",
            "",
            f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            *[f"- {k}: {v}" for k, v in info.items()],
            f"- load average at end: {load_average()}",
            f"- command: `{command()}`",
            "",
        ]
        if quick:
            head += ["**--quick: tiny sizes for smoke testing; these numbers are not a measurement.**", ""]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(head) + "\n" + text.split("\n", 2)[2])
    print(line, flush=True)
