"""The 0.2 module paths, for one release: ``import lightning_i2x.cam`` (and the other moved
modules) still works, with a ``FutureWarning`` naming the new place, and gives the new public
module. Removed in 0.4."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED_MODULES", "install"]

MOVED_MODULES: dict[str, str] = {
    "cam": "saliency", "igos": "saliency", "layers": "saliency",
    "explanation": "analysis", "suspects": "analysis",
    "run": "store",
    "faithfulness": "measures", "reliance": "measures", "sag": "measures",
    "probe": "record",
    "selection": "finetune", "penalty": "finetune",
    "plots": "viz", "patches": "viz", "views": "viz", "sinks": "viz", "report": "viz",
    "callback": "callbacks",
    "guards": "_model", "atomic": "_core",
}
"""Old module (under ``lightning_i2x.``) -> the subpackage that holds its public names now."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != "lightning_i2x" or name not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = f"lightning_i2x.{MOVED_MODULES[spec.name.partition('.')[2]]}"
        warnings.warn(f"{spec.name} moved in 0.3 and this path will be removed in 0.4; import from {new} (or lightning_i2x)",
                      FutureWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._spec = module.__spec__  # importlib sets the alias's spec on the module it is given
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec  # the module keeps its own name and spec


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
