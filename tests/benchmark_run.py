"""Runs a benchmark script in its own interpreter with every Python function it executes noted,
and checks that each is among the script's measured definitions
(``benchmarks/_freshness.measured_definitions``): the static rule that says when a committed table
is stale must not miss code a run of the script actually executes.

``python tests/benchmark_run.py OUT.json SCRIPT ARGS...`` runs ``SCRIPT ARGS...`` and writes to
``OUT.json`` the file and qualified name of each function that ran (module and class bodies, run
on import, are not counted: the rule follows names, and a module imported but unused changes no
result). A child process the script starts is not traced.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import runpy
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPREHENSIONS = {"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"}  # their enclosing function counts


def run_benchmark(script: Path, *args: str, tmp_path: Path, timeout: float = 900, env: dict | None = None,
                  **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run([python, script, *args])`` (text, output captured, cwd the repository),
    traced; when it succeeds, assert every repository file whose functions it ran is measured."""
    executed = tmp_path / f"{script.stem}-executed.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, __file__, str(executed), str(script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", ROOT), env=env, **kwargs)
    if proc.returncode == 0:
        missed = unmeasured(script, json.loads(executed.read_text()))
        assert not missed, (f"{script.name} ran {missed}, which its measured definitions do not include: "
                            "benchmarks/_freshness.py would call its table current after a change there")
    return proc


def unmeasured(script: Path, ran: list[list[str]]) -> list[str]:
    """``file:name`` of each top-level definition of this repository that ran but is not measured."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    from _freshness import WHOLE, measured_definitions

    measured = measured_definitions(script)
    missed = set()
    for filename, qualname in ran:
        path = Path(filename).resolve()
        if not path.is_relative_to(ROOT) or path.parts[len(ROOT.parts)] not in ("lightning_i2x", "benchmarks", "examples"):
            continue
        file, top = path.relative_to(ROOT).as_posix(), qualname.split(".")[0]
        names = measured.get(file, set())
        if not names or (WHOLE not in names and top.isidentifier() and top not in names):
            missed.add(f"{file}:{top}")
    return sorted(missed)


def _trace(out: Path, script: Path, args: list[str]) -> None:
    codes = set()

    def note(frame, event, arg):
        codes.add(frame.f_code)  # returning None: no line events, just this one per call

    def dump():
        sys.settrace(None)
        threading.settrace(None)
        ran = list(codes)  # one C-level copy: another thread may still note a call
        named = {(c.co_filename, c.co_qualname) for c in ran if c.co_flags & inspect.CO_OPTIMIZED and c.co_name not in COMPREHENSIONS}
        out.write_text(json.dumps(sorted(named)))

    atexit.register(dump)
    sys.argv = [str(script), *args]
    sys.path[0] = str(script.parent)
    threading.settrace(note)
    sys.settrace(note)
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    _trace(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
