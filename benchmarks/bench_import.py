"""Import time: ``import lightning_i2x`` against ``import lightning`` alone (goal: at most 1.2x).

    python benchmarks/bench_import.py [--quick] [--out FILE] [--repeats R]

Each import runs in a fresh interpreter (``python -c``), the two side by side, interleaved
(lightning, lightning_i2x, lightning, ...), after one untimed warm-up round of each (the page
cache); ``--repeats`` timed rounds (default 7; --quick: 1). The child times the import statement
itself with ``time.perf_counter`` (interpreter start-up excluded) and reports which of the heavy
modules below it then holds in ``sys.modules``; the parent also times the whole process.

Because ``import lightning`` loads matplotlib itself where it is installed (torchmetrics' plot
utilities), one more untimed child imports lightning, forgets the optional modules it loaded,
imports lightning_i2x and lists the optional modules that lightning_i2x's own code imported.

Last line: import_ratio (median lightning_i2x import time / median lightning import time) and
own_optional_imports (how many of pytorch_grad_cam, cv2, matplotlib lightning_i2x's own import
loaded: 0 is the claim).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import _common

HEAVY = ("torchvision", "pandas", "scipy", "sklearn", "faiss", "tensorboard", "markdown", "matplotlib", "cv2", "pytorch_grad_cam")
OPTIONAL = ("pytorch_grad_cam", "cv2", "matplotlib")  # loaded only by what needs them
GOAL = 1.2
VERSIONS = ("lightning", "torch", "torchmetrics", "torchvision", "matplotlib", "faiss-cpu", "scikit-learn", "scipy", "grad-cam")

TIMED = """
import json, sys, time
t0 = time.perf_counter()
import {module}
seconds = time.perf_counter() - t0
print(json.dumps({{"seconds": seconds, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""

OWN = """
import json, sys
import lightning
for name in [n for n in sys.modules if n.split(".")[0] in {optional!r}]:
    del sys.modules[name]  # what lightning loaded itself: forgotten, so lightning_i2x's imports show
import lightning_i2x
print(json.dumps([m for m in {optional!r} if m in sys.modules]))
"""


def child(code: str) -> object:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_common.REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], cwd=_common.REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"the child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=_common.REPO, capture_output=True, text=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return (head or "unknown") + (" (with uncommitted changes)" if dirty else "")


def versions() -> str:
    out = []
    for name in VERSIONS:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} absent")
    return ", ".join(out)


def main(argv=None) -> None:
    args = _common.parser(__doc__).parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 7)
    info = {"commit": commit(), **_common.machine(), "packages": versions()}
    results: dict[str, list[dict]] = {"lightning": [], "lightning_i2x": []}

    def variant(module: str):
        code = TIMED.format(module=module, heavy=HEAVY)
        return lambda: results[module].append(child(code))

    walls = _common.interleaved({m: variant(m) for m in results}, repeats, warmup=1)
    timed = {m: r[1:] for m, r in results.items()}  # the first of each is the warm-up round
    seconds = {m: [r["seconds"] for r in rs] for m, rs in timed.items()}
    med = {m: _common.median(s) for m, s in seconds.items()}
    own = child(OWN.format(optional=OPTIONAL))
    ratio = med["lightning_i2x"] / med["lightning"]

    def heavy(m: str) -> str:
        return ", ".join(timed[m][-1]["loaded"]) or "none"

    header = ["import", "median import time", "min-max", "median process wall", "heavy modules loaded"]
    rows = [[f"`import {m}`", _common.fmt_s(med[m]), _common.spread(seconds[m]), _common.fmt_s(_common.median(walls[m])), heavy(m)]
            for m in results]
    added = [m for m in timed["lightning_i2x"][-1]["loaded"] if m not in timed["lightning"][-1]["loaded"]]
    body = "\n".join([
        f"Fresh interpreters, interleaved, median of {repeats} timed rounds after one warm-up round of each.",
        "",
        _common.table(header, rows),
        "",
        f"- lightning_i2x / lightning import time: {ratio:.3f} (goal: at most {GOAL}x: {'met' if ratio <= GOAL else 'missed'}).",
        f"- heavy modules `import lightning_i2x` loads beyond `import lightning`: {', '.join(added) or 'none'}.",
        f"- optional modules ({', '.join(OPTIONAL)}) lightning_i2x's own import loaded, lightning's own forgotten: "
        f"{', '.join(own) or 'none'}.",
        f"- watched: {', '.join(HEAVY)}. Import time excludes interpreter start-up; the process wall includes it.",
    ])
    _common.report("Import time: lightning_i2x against lightning", body,
                   {"import_ratio": ratio, "own_optional_imports": float(len(own))}, args.out, info, args.quick)


if __name__ == "__main__":
    main()
