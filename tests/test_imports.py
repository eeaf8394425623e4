"""Heavy dependencies load only where used, and the package's modules import each other without cycles.

Each import check runs in a fresh interpreter (``subprocess``), where ``sys.modules`` starts empty.
``import lightning`` itself loads matplotlib when it is installed (torchmetrics' plot utilities
import pyplot), so the scripts import lightning first and then drop from ``sys.modules`` whatever
of the watched modules it loaded: a later import of one by lightning_i2x then shows in
``sys.modules`` again. The positive checks (a non-native CAM method loads pytorch-grad-cam,
drawing a figure loads matplotlib) prove that the negative ones could fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("pytorch_grad_cam", "cv2", "matplotlib")

PRELUDE = f"""
import json, sys
import lightning  # loads matplotlib itself where it is installed: forgotten below, not ours
WATCHED = {WATCHED!r}
by_lightning = sorted({{name.split(".")[0] for name in sys.modules}} & set(WATCHED))
for name in [name for name in sys.modules if name.split(".")[0] in by_lightning]:
    del sys.modules[name]

def loaded():
    return sorted({{name.split(".")[0] for name in sys.modules}} & set(WATCHED))
"""

TINY_FIT = """
import torch
import lightning.pytorch as pl
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from lightning_i2x import I2XCallback, I2XRun

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    def forward(self, x):
        return self.head(self.features(x))
    def training_step(self, batch, _i):
        x, y = batch
        return F.cross_entropy(self(x), y)
    def validation_step(self, batch, _i):  # the callback records after validation
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

torch.manual_seed(0)
x, y = torch.randn(48, 1, 8, 8), torch.arange(48) % 3
probe = TensorDataset(x[:24], y[:24])
callback = I2XCallback(probe, num_prototypes=4, views=False, run_dir=RUN_DIR)
trainer = pl.Trainer(callbacks=[callback], max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
trainer.fit(Tiny(), DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(probe, batch_size=24))
run_path = str(callback.run.path)
run = I2XRun.load(run_path)
checkpoints = run.num_checkpoints
"""


def run_script(body: str) -> dict:
    """Run PRELUDE + ``body`` in a fresh interpreter; ``body`` ends by printing one JSON line."""
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_loads_no_cam_library_and_no_matplotlib():
    out = run_script("""
        import lightning_i2x
        print(json.dumps({"loaded": loaded(), "figures": "lightning_i2x.viz._figures" in sys.modules}))
    """)
    assert out == {"loaded": [], "figures": False}, f"import lightning_i2x loaded {out}"


def test_fit_without_views_loads_no_cam_library_and_no_matplotlib(tmp_path):
    run_dir = tmp_path / "run"
    out = run_script(f"RUN_DIR = {str(run_dir)!r}\n" + TINY_FIT + """
print(json.dumps({"loaded": loaded(), "checkpoints": checkpoints, "cam": callback.cam, "path": run_path}))
""")
    # the fit really ran the pipeline: a checkpoint recorded in the run directory
    assert out["checkpoints"] >= 1 and list((Path(out["path"]) / "checkpoints").glob("ckpt-*.npz")), f"the fit recorded nothing: {out}"
    assert Path(out["path"]).is_relative_to(run_dir)
    assert out["cam"] == "gradcam"
    assert out["loaded"] == [], f"a fit with views=False and the native GradCAM loaded {out['loaded']}"


def test_a_library_cam_method_loads_pytorch_grad_cam():
    out = run_script("""
        import torch
        from torch import nn
        from lightning_i2x.saliency import probe_batches
        before = loaded()
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        batch = next(probe_batches(model, model[0], torch.randn(6, 1, 8, 8), torch.arange(6) % 3, cam="gradcam++"))
        print(json.dumps({"before": before, "after": loaded()}))
    """)
    assert out["before"] == []
    assert "pytorch_grad_cam" in out["after"], out


def test_drawing_a_figure_loads_matplotlib():
    out = run_script("""
        import numpy as np
        import lightning_i2x.viz
        before = loaded()
        from lightning_i2x.viz import confusion_matrix, to_rgb
        rgb = to_rgb(confusion_matrix(np.array([[3, 1], [0, 4]]), ["a", "b"]))
        print(json.dumps({"before": before, "after": loaded(), "shape": list(rgb.shape)}))
    """)
    assert out["before"] == [], "import lightning_i2x.viz loaded matplotlib: the figure modules load on first use"
    assert out["after"] == ["matplotlib"] and out["shape"][2] == 3, out


def test_missing_matplotlib_says_what_needs_it_and_how_to_install():
    out = run_script("""
        sys.modules["matplotlib"] = None  # as if not installed
        import lightning_i2x.viz as viz
        try:
            viz.evolution_grid
        except ImportError as e:
            print(json.dumps({"error": str(e)}))
        else:
            print(json.dumps({"error": None}))
    """)
    assert out["error"] and "the figures" in out["error"] and "pip install matplotlib" in out["error"], out


# -- import cycles ---------------------------------------------------------------------------------

PACKAGE = "lightning_i2x"
# the layers contract's ignore_imports (pyproject.toml): presentation accessors (Explanation.plot_*,
# I2XRun.plot_*, SAG.plot) import the figures inside the method; every edge from them into viz is dropped
ACCESSORS = ("lightning_i2x.analysis._explanation", "lightning_i2x.store._run", "lightning_i2x.measures._sag._graph")


def _edges() -> dict[str, dict[str, str]]:
    """importer -> {imported: 'line N: the import'}, among the package's own modules, every import
    statement included (function-level ones and ``if TYPE_CHECKING:`` blocks too)."""
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    modules = {m for m in graph.modules if m == PACKAGE or m.startswith(PACKAGE + ".")}
    edges: dict[str, dict[str, str]] = {m: {} for m in modules}
    for importer in modules:
        for imported in graph.find_modules_directly_imported_by(importer) & modules:
            if importer in ACCESSORS and (imported == f"{PACKAGE}.viz" or imported.startswith(f"{PACKAGE}.viz.")):
                continue
            details = graph.get_import_details(importer=importer, imported=imported)
            edges[importer][imported] = "; ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details[:2])
    return edges


def _subpackage(module: str) -> str:
    """``lightning_i2x.viz._figures`` -> ``lightning_i2x.viz``; the root package stays itself."""
    return ".".join(module.split(".")[:2])


def _squashed(edges: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {_subpackage(m): {} for m in edges}
    for importer, targets in edges.items():
        for imported, where in targets.items():
            a, b = _subpackage(importer), _subpackage(imported)
            if a != b:
                out[a].setdefault(b, f"{importer} -> {imported} ({where})")
    return out


def find_cycle(edges: dict[str, dict[str, str]]) -> list[str] | None:
    """A cycle of the directed graph as [a, b, ..., a] (depth-first search, iterative), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def _describe(cycle: list[str], edges: dict[str, dict[str, str]]) -> str:
    return "\n".join(f"  {a} -> {b}   [{edges[a][b]}]" for a, b in zip(cycle, cycle[1:]))


def test_find_cycle():
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {}}) is None
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {}, "b": {"b": ""}}) == ["b", "b"]


@pytest.fixture(scope="module")
def edges():
    return _edges()


def test_the_graph_holds_function_level_and_package_imports(edges):
    """Guards the check below: grimp sees imports inside functions, resolves ``from . import
    module`` to the module, and the accessors' edges are the only ones dropped."""
    assert f"{PACKAGE}.viz._figures" in edges[f"{PACKAGE}.viz._views"]  # `from . import _figures` inside log_figures
    assert f"{PACKAGE}.viz._figures" in edges[f"{PACKAGE}.viz._finetune_log"]  # inside log_finetune
    assert f"{PACKAGE}.viz._views" in edges[f"{PACKAGE}.viz"]  # a package's __init__ and its child
    assert f"{PACKAGE}.callbacks" in edges[PACKAGE]
    assert not any(t.startswith(f"{PACKAGE}.viz") for a in ACCESSORS for t in edges[a])


def test_no_import_cycles(edges):
    """No cycles among the package's modules, function-level imports included, apart from the
    declared presentation accessors (their edges into ``viz`` are dropped).

    The rule, at two levels:

    - across subpackages: every module is squashed to its subpackage (``lightning_i2x.viz._figures``
      -> ``lightning_i2x.viz``; top-level modules and the root package are their own nodes), and
      the subpackage graph must be acyclic: the data flow, even where two modules never import
      each other at run time;
    - within a subpackage: the module graph restricted to it (its ``__init__`` included) must be
      acyclic. A package's ``__init__`` importing its children is no cycle by itself; grimp
      resolves ``from . import sibling`` to the sibling module, not to the package, so a child
      reaches its package only by importing a name from the ``__init__``, and with the ``__init__``
      importing that child this is a true cycle (the name exists only once the ``__init__`` has
      run that far), so it counts.

    Any module-level cycle crossing subpackages is a cycle of the squashed graph, so the two
    checks together cover every cycle of the module graph.
    """
    squashed = _squashed(edges)
    cycle = find_cycle(squashed)
    assert cycle is None, "import cycle between subpackages:\n" + _describe(cycle, squashed)
    for sub in sorted(set(squashed)):
        inside = {m: {t: w for t, w in edges[m].items() if _subpackage(t) == sub} for m in edges if _subpackage(m) == sub}
        cycle = find_cycle(inside)
        assert cycle is None, f"import cycle inside {sub}:\n" + _describe(cycle, inside)
